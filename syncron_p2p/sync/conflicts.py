"""Causality and conflicts, with no timestamps anywhere.

Given the local record of a path and a remote one, :func:`resolve` says what
the path becomes. The rule (normative in ``docs/protocol.md``):

1. If one version vector dominates the other, the newer record wins outright.
2. If the vectors are equal the records are the same version; should their
   content still differ (only a broken peer does that), the total order below
   picks one, so every node still agrees.
3. Concurrent with the same content: merge silently (pointwise-max vector;
   the ``origin`` fields of the higher-ordered record, so the result is one
   record whatever the order of arrival).
4. Concurrent with different content: the total order :func:`order_key`
   picks the winner; the result is the winner's content with the merged
   vector and *no new increment*, so every node computes the same record.
   The loser, unless it is a deletion, is kept as a conflict copy whose name
   and record are pure functions of the losing version (:func:`conflict_copy`),
   so nodes resolving the same conflict independently produce one copy.

The total order compares, in turn: live beats deleted (a concurrent delete
never destroys an edit), directory beats file and symlink (a directory's
contents are never replaced by a file), then the counter sum of the vector
the content was minted with, the minting actor, the content hash, mode and
link target. These are intrinsic to a version and never change when vectors
merge, which makes resolution commutative and associative: three nodes that
see three concurrent versions in any order end with the same winner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from syncron_p2p.index.records import EntryType, Record
from syncron_p2p.index.versions import Order

CONFLICT_MARK = ".sync-conflict-"


class Outcome(enum.Enum):
    KEEP = "keep"  # local stays as it is
    TAKE = "take"  # remote replaces local
    MERGE = "merge"  # same content, merged vector: index-only change
    CONFLICT = "conflict"  # winner with merged vector, loser kept as a copy


@dataclass(frozen=True, slots=True)
class Resolution:
    outcome: Outcome
    result: Record | None = None  # what the path's record becomes (not KEEP)
    loser: Record | None = None  # the losing version (CONFLICT only)
    loser_is_local: bool = False


def order_key(r: Record) -> tuple[bool, bool, int, str, bytes, int, str]:
    """The total order on versions used to pick a conflict winner (max wins)."""
    return (
        not r.deleted,
        r.type == EntryType.DIRECTORY and not r.deleted,
        r.origin_sum,
        r.origin,
        r.content_hash,
        r.mode,
        r.target,
    )


def resolve(local: Record | None, remote: Record) -> Resolution:
    """What ``remote`` does to a path whose local record is ``local``."""
    if local is None:
        return Resolution(Outcome.TAKE, remote)
    order = remote.version.compare(local.version)
    if order == Order.BEFORE:
        return Resolution(Outcome.KEEP)
    if order == Order.AFTER:
        if remote.same_content(local):
            return Resolution(Outcome.MERGE, remote)
        return Resolution(Outcome.TAKE, remote)
    if order == Order.EQUAL:
        if order_key(remote) <= order_key(local):
            return Resolution(Outcome.KEEP)
        return Resolution(Outcome.MERGE if remote.same_content(local) else Outcome.TAKE, remote)
    merged = local.version.merge(remote.version)
    winner, loser = (remote, local) if order_key(remote) > order_key(local) else (local, remote)
    result = replace(winner, version=merged, sequence=0, fingerprint=None)
    if remote.same_content(local) or loser.deleted:
        return Resolution(
            Outcome.MERGE if remote.same_content(local) else _win(winner, remote), result
        )
    return Resolution(Outcome.CONFLICT, result, loser, loser_is_local=loser is local)


def _win(winner: Record, remote: Record) -> Outcome:
    # A deleted loser needs no copy: the winner's content simply stands.
    return Outcome.TAKE if winner is remote else Outcome.MERGE


def conflict_name(path: str, loser: Record, n: int = 1) -> str:
    """``dir/name.sync-conflict-<actor>-<hash8>.ext``: a pure function of the version.

    ``n`` > 1 (``...-<hash8>-<n>.ext``): the ``n``-th choice, when the names
    before it hold other content (protocol §8: never over another file).
    """
    head, sep, name = path.rpartition("/")
    actor = loser.origin.split(".")[0][:12] or "unknown"
    tag = f"{CONFLICT_MARK}{actor}-{loser.content_hash.hex()[:8]}"
    if n > 1:
        tag += f"-{n}"  # (not ".n": "a.1" and "a" would share names)
    stem, dot, ext = name.rpartition(".")
    # no extension, or a dotfile such as ".bashrc": the tag goes at the end
    new = name + tag if not dot or not stem else f"{stem}{tag}.{ext}"
    if len(new.encode("utf-8")) > 255:
        new = new.encode("utf-8")[-255:].decode("utf-8", errors="ignore")
    return f"{head}{sep}{new}"


def conflict_copy(loser: Record, n: int = 1) -> Record:
    """The record of the conflict copy: the loser's version at the conflict name."""
    return replace(loser, path=conflict_name(loser.path, loser, n), sequence=0, fingerprint=None)
