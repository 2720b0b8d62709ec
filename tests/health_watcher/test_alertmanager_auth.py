"""The Alertmanager receiver with a bearer token (Alertmanager's http_config.authorization):
a real health-watcher process hears only the bearer of its token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from confbus.schemas.policy import Policy
from tests.health_watcher.conftest import StartWatcher
from tests.health_watcher.support import AlertLog, StoreStub
from tests.health_watcher.test_alertmanager import NS, am_alert, body, webhook

pytestmark = pytest.mark.anyio


async def test_the_receiver_hears_only_the_bearer_of_its_token(
    store: StoreStub, alert_log: AlertLog, start_watcher: StartWatcher, tmp_path: Path
) -> None:
    store.policies[NS] = Policy(namespace=NS)
    token_file = tmp_path / "am.token"
    token_file.write_text("s3cr3t-token-for-alertmanager\n")
    watcher = await start_watcher("--alertmanager-token-file", str(token_file))
    assert watcher.ready is not None
    url = str(watcher.ready["alertmanager_url"])
    payload = body(webhook(am_alert(confbus_version="3")))
    async with httpx.AsyncClient(timeout=5) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            refused = await http.post(url, content=payload, headers=headers)
            assert refused.status_code == 401, refused.text
            assert "bearer token" in refused.json()["error"]
        assert alert_log.alerts == []
        good = {"Authorization": "Bearer s3cr3t-token-for-alertmanager"}
        accepted = await http.post(url, content=payload, headers=good)
        assert accepted.status_code == 200, accepted.text
    fired = await alert_log.wait(lambda a: a.state == "firing")
    assert fired.namespace == NS and fired.version == 3
