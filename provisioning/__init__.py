"""Fleet provisioning for Vigil: node identities and certificates, broker ACLs, node bundles, and the
installer that puts a bundle on a Raspberry Pi. Needs the `provision` extra (cryptography) on the
operator's machine; the node runs only install.py, which uses the standard library."""
