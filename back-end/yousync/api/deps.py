"""Typed access to what the lifespan built, as `Annotated` aliases: routers read like sentences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from yousync.api.limits import UploadSlots
from yousync.api.streaming.events import EventHub
from yousync.api.streaming.read_batcher import StreamReadBatcher
from yousync.api.uploads.submission import Enqueue
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore


@dataclass
class AppServices:
    settings: Settings
    jobs: AsyncJobStore
    hub: EventHub
    stream_reads: StreamReadBatcher
    enqueue: Enqueue
    revoke: Callable[[str], None]
    upload_slots: UploadSlots


def get_services(request: Request) -> AppServices:
    services: AppServices = request.app.state.services
    return services


def get_settings_dep(request: Request) -> Settings:
    return get_services(request).settings


def get_jobs(request: Request) -> AsyncJobStore:
    return get_services(request).jobs


def get_hub(request: Request) -> EventHub:
    return get_services(request).hub


def get_stream_reads(request: Request) -> StreamReadBatcher:
    return get_services(request).stream_reads


def get_enqueue(request: Request) -> Enqueue:
    return get_services(request).enqueue


def get_revoke(request: Request) -> Callable[[str], None]:
    return get_services(request).revoke


def get_upload_slots(request: Request) -> UploadSlots:
    return get_services(request).upload_slots


UploadSlotsDep = Annotated[UploadSlots, Depends(get_upload_slots)]
RevokeDep = Annotated[Callable[[str], None], Depends(get_revoke)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobsDep = Annotated[AsyncJobStore, Depends(get_jobs)]
StreamReadsDep = Annotated[StreamReadBatcher, Depends(get_stream_reads)]
HubDep = Annotated[EventHub, Depends(get_hub)]
EnqueueDep = Annotated[Enqueue, Depends(get_enqueue)]
