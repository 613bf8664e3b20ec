"""Annotated dependencies shared by the routes (FastAPI full-stack template style)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path
from sqlmodel import Session

from ledger.auth import ContextDep, SignerDep  # noqa: F401  (re-exported for routes)
from ledger.schemas import EVM_ADDRESS, HEX32


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with Session(ctx.read_engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
KeyPath = Annotated[str, Path(pattern=HEX32, description="32-byte key or id, lowercase hex")]
AddressPath = Annotated[str, Path(pattern=EVM_ADDRESS, description="EVM address (0x + 40 hex)")]
