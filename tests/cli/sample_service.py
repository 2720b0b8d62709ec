"""A minimal service on the real runtime (``service_main``), for testing ``confbus up``'s
supervisor without depending on what the real services do."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from confbus.runtime.service import ServiceContext, service_main


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    # An extra `<name>_port` key in the ready line appears in the stack's line as a URL.
    ctx.ready_info["sample_port"] = ctx.http_port
    task_status.started()
    await anyio.sleep_forever()


if __name__ == "__main__":
    service_main("sample", main)
