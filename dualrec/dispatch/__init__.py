"""Available-user store and capacity-constrained dispatch (paper 4.1-4.2, Algorithm 1, Eq. 14).

``kernels``: one batch's assignment in NumPy (arrival, matching, min-cost flow);
``policies``: the day-level rules (arrival, matching, paced, optimal) on arrays;
``store``: the Spark stage's store and day loop, and the invariant check;
``outputs``: match_sets ranks, the D_u rollup and the boost.
"""

from dualrec.dispatch.kernels import KERNELS, assign_arrays
from dualrec.dispatch.outputs import add_rank_in_item, apply_boost, rank_in_item_arrays, user_match_sets_df
from dualrec.dispatch.policies import (
    POLICIES,
    PolicyParams,
    dispatch_day_arrays,
    fair_share,
    forecast_remaining,
    paced_budget,
    paced_curve,
    prior_upload_batches,
    upload_curve,
)
from dualrec.dispatch.store import (
    DayDispatch,
    DispatchInvariantError,
    assign_edges,
    check_invariants,
    check_ranked_against_items,
    dispatch_day,
    item_order_df,
    update_store,
)

__all__ = [
    "paced_curve",
    "prior_upload_batches",
    "KERNELS", "POLICIES", "DayDispatch", "DispatchInvariantError", "PolicyParams", "add_rank_in_item",
    "apply_boost", "assign_arrays", "assign_edges", "check_invariants", "check_ranked_against_items",
    "dispatch_day", "dispatch_day_arrays", "fair_share", "forecast_remaining", "item_order_df", "paced_budget",
    "rank_in_item_arrays", "update_store", "upload_curve", "user_match_sets_df",
]
