"""The run's data: the batches its `DataSpec` describes, the batch shrunk to fit a small
training set, split over the processes of a data-parallel run."""

import logging
import math
from dataclasses import replace

from ..data.datasets import make_data
from ..data.spec import DataSpec
from ..errors import ConfigError
from .specs import spec_from

log = logging.getLogger(__name__)


def data_for(cfg, procs):
    """The run's data, validation and test split over the processes; a batch larger than the
    training set shrinks to fit it (said)."""
    data = make_data(spec_from(DataSpec, cfg))
    if len(data.train) == 0:  # fewer training images than one batch
        images = data.train.num_images
        unit = procs.world_size * math.lcm(cfg.device_batch_size or 1,
                                           data.train.per_process_multiple)
        batch = images - images % unit
        if batch < 1:
            raise ConfigError(f"{images} training images cannot be shared by "
                              f"{procs.world_size} processes in micro-batches of "
                              f"{cfg.device_batch_size or 1}")
        if procs.main:
            log.warning(f"--batch-size {cfg.batch_size} is more than the {images} training "
                        f"images: using batches of {batch}")
        cfg = replace(cfg, batch_size=batch)
        data = make_data(spec_from(DataSpec, cfg))
    data.train.shard(procs.rank, procs.world_size)
    if procs.distributed:
        data.val = data.val and data.val.share(procs.rank, procs.world_size)
        data.test = data.test.share(procs.rank, procs.world_size)
    return cfg, data
