"""A stand-in training loop for tests/test_stop.py: one process of a two-process jax.distributed run (gloo).

Each "step" is a real cross-process collective (as a train step is), so a process that left the loop alone
would leave the other one hanging. Prints ``step N`` per step and ``STOPPED AT N`` / ``FINISHED``.

    python tests/stop_worker.py ADDRESS PROCESS_ID EVERY_STEPS INSTALL_HANDLER(0|1) NUM_STEPS
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    address, process_id, every, handler, num_steps = sys.argv[1:6]
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=int(process_id))
    import jax.numpy as jnp
    import numpy as np

    from mdm_jax.training.stop import StopCoordinator

    stop = StopCoordinator(int(every), install_handler=handler == "1")
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("p",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("p"))
    total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    for step in range(int(num_steps)):
        if stop.poll(step, stop.is_check_step(step)):
            print(f"STOPPED AT {step} {sorted(stop.decided.items())}", flush=True)
            return
        x = jax.make_array_from_process_local_data(sharding, np.ones((1,), np.float32), (2,))
        assert float(total(x).addressable_data(0)) == 2.0
        print(f"step {step}", flush=True)
        time.sleep(0.01)
    print("STOPPED AT" if stop.finish(int(num_steps)) else "FINISHED", flush=True)


if __name__ == "__main__":
    main()
