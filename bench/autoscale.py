"""Ray's real autoscaler on this machine (bench/autoscaling_cluster.py: cluster.yaml's node types under the fake
multinode provider, autoscaler v2, the simulated task): a sweep of 8 half-GPU trials on a cluster that starts with
no worker; once trials run, the busiest `gpu_small_spot` node is killed without notice, as a spot instance goes.

- autoscale_recovery_s: seconds from the loss to the first epoch a trial logs on the replacement node the
  autoscaler launched (node declared dead, instance terminated, a new one started, a trial restarted there);
- autoscale_redone_epochs: training thrown away per trial of the lost node, in epochs (checkpointed epochs its
  restart did not resume from, plus the part of the epoch in progress); target <= 1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Result


def run(quick: bool = False) -> list[Result]:
    from bench.autoscaling_cluster import NODE_TYPE, redone_epochs, replacement_first_epoch_s, spot_loss_sweep

    epochs = 6 if quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        seen = spot_loss_sweep(Path(tmp), epochs=epochs)
    redone = redone_epochs(seen) if seen.get("runs") else {}
    recovery = replacement_first_epoch_s(seen) if seen.get("runs") else None
    keys = [r.data.tags["trial_key"] for r in seen.get("runs", [])]
    sweep = (f"sweep exit {seen.get('exit')}, {len(set(keys))} trials in MLflow ({len(keys)} runs), "
             f"idle workers removed: {seen.get('idle_removed')}, Ray processes left: {len(seen.get('left_behind', []))}")
    return [
        Result(key="autoscale_recovery_s", value=recovery, target="-",
               ours=f"from killing a {NODE_TYPE} node (no notice) to the first epoch on the replacement the "
                    f"autoscaler launched: {recovery} s; {sweep}",
               baseline=f"the epoch time ({seen['epoch_seconds']} s); nodes added: "
                        f"{[e.split('-- ')[-1] for e in seen.get('events', [])]}",
               details={"events": seen.get("events", []),
                        "replacement_seen_s": round(seen["replaced_at"] - seen["lost_at"], 1)
                        if seen.get("replaced") else None}),
        Result(key="autoscale_redone_epochs", value=max(redone.values()) if redone else None, target="<= 1",
               ours=f"{len(redone)} trials on the lost node; epochs redone per trial {sorted(redone.values())}",
               baseline="0: a trial that loses nothing"),
    ]
