"""An androcond agent on a device as a migration's target, reached over adb or the network: one ssh link per
migration (androcond/link/transport.py), open for as long as the block that asked for it runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from ..config import DeviceSettings
from ..faults import NO_FAULTS, Faults
from ..link.adb import AdbClient, AdbError
from ..link.devices import DeviceError, agent_endpoint
from ..link.ssh import PhaseTimeouts, TransportError
from ..link.transport import AgentConnection


class TargetUnreachable(TransportError):
    """The device could not be reached (adb, its address, its configuration); nothing was sent."""


AgentLinks = Callable[[DeviceSettings], AbstractAsyncContextManager[AgentConnection]]


def agent_links(adb: AdbClient, timeouts: PhaseTimeouts, faults: Faults = NO_FAULTS) -> AgentLinks:
    """Links to devices' agents: a migration's target, or its source on the way back (source/agent.py)."""

    @contextlib.asynccontextmanager
    async def link_to(device: DeviceSettings) -> AsyncIterator[AgentConnection]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                endpoint = await stack.enter_async_context(agent_endpoint(device, adb, faults))
            except (AdbError, DeviceError) as exc:
                raise TargetUnreachable(str(exc)) from exc
            yield await stack.enter_async_context(await AgentConnection.open(endpoint, timeouts,
                                                                                 compress=device.compress))

    return link_to
