"""The operators' page (`vigil-fleet serve`): map, node list, latest events, node drill-down, /metrics."""
