"""Spec files for the spec step's tests: two specs that wait for each other, so running
them one after the other fails (concurrency proven without a clock)."""

from __future__ import annotations

import textwrap

# A spec that announces itself in $RENDEZVOUS, then waits (up to a minute) for `other`'s;
# `decl` is any module-level text (a declaration goldsmith.spec reads).
MEETS = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    {decl}

    def test_{me}_meets_{other}():
        rendezvous = Path(os.environ["RENDEZVOUS"])
        (rendezvous / "{me}").touch()
        deadline = time.monotonic() + 60
        while not (rendezvous / "{other}").exists():
            assert time.monotonic() < deadline, "{other}'s specs never ran beside mine"
            time.sleep(0.05)
    """
)
