"""Files written atomically look like files written plainly."""

from __future__ import annotations

import os

from blockexp.io.outputs import atomic_write


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.json", "{}")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert atomic_write(tmp_path / "b.json", "{}").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
    assert path.read_text() == "{}"
