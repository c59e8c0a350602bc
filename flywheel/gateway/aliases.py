"""Which registry versions the gateway's arms are, re-read off the request path.

The row's ``model_version`` names the version that answered, ``<model>@<alias>/<version>``
(``support-bot@champion/3``), or ``<model>@<alias>`` while the registry cannot say (no MLflow store yet). The
challenger arm is live only while the registry has a ``challenger`` that is not the champion; without a registry
the config alone decides.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.gateway.routing import CHALLENGER, CHAMPION


@dataclass
class AliasView:
    model_name: str
    tracking_uri: str | None = None  # None: no registry, static labels
    versions: dict[str, int | None] = field(default_factory=lambda: {CHAMPION: None, CHALLENGER: None})
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def from_config(cls, cfg) -> AliasView:
        """A view on the configured registry; static when neither a tracking URI nor the SQLite store exists."""
        name = cfg.registry.model_name or cfg.project.name
        if cfg.registry.tracking_uri:
            return cls(name, cfg.registry.tracking_uri)
        db = Path(cfg.state) / "mlflow.db"
        return cls(name, f"sqlite:///{db.resolve()}" if db.exists() else None)

    def label(self, arm: str) -> str:
        version = self.versions.get(arm)
        return f"{self.model_name}@{arm}" + ("" if version is None else f"/{version}")

    @property
    def challenger_live(self) -> bool:
        if self.tracking_uri is None:
            return True
        challenger = self.versions.get(CHALLENGER)
        return challenger is not None and challenger != self.versions.get(CHAMPION)

    def refresh(self) -> None:
        """Re-read the aliases (MLflow call: never on the request path)."""
        if self.tracking_uri is None:
            return
        from flywheel.registry import alias_version, client_for

        try:
            client = client_for(self.tracking_uri)
            self.versions = {arm: alias_version(client, self.model_name, arm) for arm in (CHAMPION, CHALLENGER)}
            self.error = None
        except Exception as e:  # noqa: BLE001 - keep the last known versions; /health shows the error
            self.error = f"{type(e).__name__}: {e}"[:300]

    def start(self, every_s: float) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.refresh()
                self._stop.wait(every_s)

        threading.Thread(target=loop, name="alias-refresh", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
