"""One step that yields thousands of asset results, at Dagster's cost per result instead of the step's size
squared.

For each ``Output`` a multi-asset yields, Dagster 1.13 checks that no asset was yielded before one it
depends on (``execute_step._step_output_error_checked_user_event_sequence``). It asks the step for
``StepExecutionContext.get_output_asset_keys()`` every time, which loops over every output of the step
and, for each, rebuilds the set of the assets definition's keys (``AssetsDefinition.asset_and_check_keys``,
a new set each call): O(n²) per result, O(n³) per run. With 2,500 packages that was 0.3-0.5 s per
package, 78% of the run's CPU (bench/generated_set.py, profiled). The answer cannot change during a step
(its outputs and their assets are fixed when it starts), so it is computed once for this step.
"""

from __future__ import annotations

import functools
from typing import Any

from dagster import AssetExecutionContext


def compute_output_keys_once(context: AssetExecutionContext) -> bool:
    """Memoise the step's ``get_output_asset_keys`` (on this step's context object only, nothing global).
    Returns whether it could (False: a Dagster without that method; only slower, so nothing to report)."""
    step: Any = context.get_step_execution_context()
    method = getattr(type(step), "get_output_asset_keys", None)
    if method is None:
        return False
    keys = functools.cache(functools.partial(method, step))
    step.get_output_asset_keys = keys
    return True


__all__ = ["compute_output_keys_once"]
