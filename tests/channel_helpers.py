"""Helpers shared by the channel tests (test_channels, test_coldllm): the day's items as a channel
receives them, and a channel's output as {item: {user: score}}."""

from __future__ import annotations


def items_df(ctx):
    from dualrec.stages.retrieve import day_items

    return day_items(ctx)


def by_item(df) -> dict[int, dict[int, float]]:
    out: dict[int, dict[int, float]] = {}
    for r in df.collect():
        out.setdefault(r["item_id"], {})[r["user_id"]] = r["score"]
    return out
