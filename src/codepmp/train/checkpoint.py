"""Resumable checkpoints in the object store: one prefix per step, a completion marker written last."""

from __future__ import annotations

import re
from pathlib import Path

STEP_DIR = re.compile(r"step-(\d{8})/")


class StoreCheckpointer:
    """Checkpoints under `s3://bucket/<prefix>/step-XXXXXXXX/`; only marked (complete) ones are resumable."""

    def __init__(self, store, prefix: str, keep: int = 2):
        """`keep`: newest checkpoints kept after each save; 0 keeps all (scaling-curve checkpoints)."""
        self.store, self.prefix, self.keep = store, prefix.rstrip("/"), keep

    def _steps(self) -> list[int]:
        steps = {int(m.group(1)) for k in self.store.list(self.prefix + "/") if (m := STEP_DIR.search(k))}
        return sorted(s for s in steps if self.store.is_done(self._key(s)))

    def _key(self, step: int) -> str:
        return f"{self.prefix}/step-{step:08d}"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        return self._steps()

    def latest(self) -> int | None:
        steps = self._steps()
        return steps[-1] if steps else None

    def save(self, step: int, local_dir: Path) -> None:
        self.upload(step, local_dir)
        self.commit(step)

    def upload(self, step: int, local_dir: Path) -> None:
        """Add files to step's checkpoint; with several processes each uploads its own, then one commits."""
        self.store.upload_dir(local_dir, self._key(step))

    def commit(self, step: int) -> None:
        """Mark step's checkpoint complete (resumable), then prune old ones."""
        self.store.mark_done(self._key(step), {"step": step})
        if self.keep:
            for old in self._steps()[:-self.keep]:
                self.store.delete_prefix(self._key(old))

    def restore(self, step: int, local_dir: Path) -> None:
        self.store.download_dir(self._key(step), local_dir)
