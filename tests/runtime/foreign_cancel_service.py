"""A service whose main task is hit by a CancelledError that no cancel scope raised — as gRPC
does to the calls of a channel it closes — once it is ready."""

from __future__ import annotations

import asyncio

import anyio
from anyio.abc import TaskStatus

from confbus.runtime.service import ServiceContext, service_main


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    task_status.started()
    await anyio.sleep(0.3)
    raise asyncio.CancelledError()  # not from anyio: nobody asked this task to stop


if __name__ == "__main__":
    service_main("foreign-cancel", main)
