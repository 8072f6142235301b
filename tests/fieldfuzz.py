"""Checksum-valid nonsense for line protocols (NMEA sentences, AT replies): comma-separated fields
replaced, deleted, repeated, cut short or added to, so parsers meet wrong types, lengths and ranges
rather than random bytes a checksum or framing would already reject."""

from __future__ import annotations

from hypothesis import strategies as st

Mutation = tuple[str, int, str]


def mutations(field: st.SearchStrategy[str], *, first: int = 0) -> st.SearchStrategy[Mutation]:
    """One edit of a field at index `first` or later (1 keeps an NMEA sentence's type)."""
    return st.one_of(
        st.tuples(st.just("replace"), st.integers(first, 20), field),
        st.tuples(st.just("delete"), st.integers(first, 20), st.just("")),
        st.tuples(st.just("repeat"), st.integers(first, 20), st.just("")),
        st.tuples(st.just("truncate"), st.integers(first, 20), st.just("")),
        st.tuples(st.just("append"), st.just(0), field),
    )


def mutate(text: str, edits: list[Mutation], *, first: int = 0) -> str:
    """`text` with `edits` applied; fields before `first` are never touched."""
    fields = text.split(",")
    for op, index, value in edits:
        i = min(index, len(fields) - 1)
        if op in ("replace", "delete", "repeat") and i < first:
            continue
        if op == "replace":
            fields[i] = value
        elif op == "delete" and len(fields) > 1:
            del fields[i]
        elif op == "repeat":
            fields.insert(i, fields[i])
        elif op == "truncate":
            fields = fields[: max(1, index)]
        elif op == "append":
            fields.append(value)
    return ",".join(fields)
