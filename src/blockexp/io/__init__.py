"""Model files on disk: base loading, digests, manifests, atomic outputs, streaming expansion.

Also the output guard, locks, stale temporaries and portable output directories. May import
:mod:`blockexp.layers` only.
"""
