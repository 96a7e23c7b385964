"""Scale-out: device meshes, logical-axis sharding rules, multi-host start-up.

    mesh = parallel.mesh_from_config(cfg)            # cfg.mesh.axes / dcn_axes
    rules = parallel.rules_from_config(cfg)          # cfg.mesh.rules + DEFAULT_RULES
    graphdef, params = parallel.init_sharded(
        lambda k: models.init_model(model_cfg, k), mesh, rules)(key)
"""
from rlx.parallel.distributed import (detect_cluster, host_local_to_global, init_args,
                                      is_main_process, maybe_initialize,
                                      process_batch_slice, process_count, process_index)
from rlx.parallel.mesh import (BATCH_AXES, batch_axes, check_batch_divisible, make_mesh,
                               mesh_from_config, num_batch_shards, resolve_axes)
from rlx.parallel.rules import (CACHE_AXES, DEFAULT_RULES, batch_mesh_axes, batch_sharding,
                                model_mesh,
                                batch_spec, bytes_per_device, cache_sharding,
                                init_opt_state_sharded,
                                init_sharded, logical_to_sharding, logical_to_spec,
                                make_rules, opt_state_shardings, param_shardings,
                                place_tensor, rules_from_config, shard_batch, shard_params,
                                spec_summary)
