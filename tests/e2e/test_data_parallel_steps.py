"""Two gloo processes on the CPU: accumulated micro-batches under DDP update the weights as one
process's whole batch does (float64, 1e-6), and sharded evaluation counts every image once."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from normfree.data.batches import TensorBatches
from normfree.evaluation import evaluate
from normfree import create_model
from normfree.training import distributed
from normfree.training.optim import make_optimizer, train_step

BATCH = 16  # the global batch: 2 processes × 2 micro-batches of 4


def tiny_model():
    torch.manual_seed(0)
    return create_model("nfnet_tiny", 4, dropout=0.0, stochastic_depth=0.0).double()


def global_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, 3, 16, 16, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (BATCH,), generator=g))


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def updated(model, forward, images, labels, **step):
    optimizer = make_optimizer(model, "sgd", lr=0.5, momentum=0.9, weight_decay=1e-3,
                               clip_factor=1e-3)
    for _ in range(2):
        train_step(forward, optimizer, images, labels, label_smoothing=0.1, **step)
    return weights(model)


def worker(rank, init_file, results, images_count):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = tiny_model()
        ddp = DistributedDataParallel(model)
        images, labels = global_batch()
        part = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        calls = {"no_sync": 0}

        def counted_no_sync():
            calls["no_sync"] += 1
            return ddp.no_sync()
        after = updated(model, ddp, images[part], labels[part], micro_batch=4,
                        no_sync=counted_no_sync)
        procs = distributed.Processes(rank, 2)
        batches = evaluation_set(images_count).share(rank, 2)
        scores = evaluate(tiny_model().eval(), batches, lambda x: x,
                          sum_across=lambda v: distributed.sum_across(procs, v, "cpu"))
        torch.save({"weights": after, "no_sync_calls": calls["no_sync"], "scores": scores,
                    "images": len(batches.labels)}, os.path.join(results, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def evaluation_set(count):
    g = torch.Generator().manual_seed(2)
    return TensorBatches(torch.randn(count, 3, 16, 16, generator=g, dtype=torch.float64),
                         torch.randint(0, 4, (count,), generator=g), batch_size=8)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("gloo")
    mp.spawn(worker, args=(str(root / "init"), str(root), 101), nprocs=2, join=True)
    return [torch.load(root / f"{rank}.pt") for rank in range(2)]


def test_accumulated_ddp_steps_equal_one_process_whole_batch(two_processes):
    model = tiny_model()
    images, labels = global_batch()
    alone = updated(model, model, images, labels)
    for rank in two_processes:
        assert ((rank["weights"] - alone).abs().max() / alone.abs().max()).item() < 1e-6
        assert rank["no_sync_calls"] == 2  # 2 updates × (2 micro-batches − 1)
    assert (alone - weights(tiny_model())).abs().max() > 1e-3


def test_sharded_evaluation_counts_each_image_once(two_processes):
    """101 images over 2 processes (51 + 50): top-1 and top-5 exactly as one process counts."""
    alone = evaluate(tiny_model().eval(), evaluation_set(101), lambda x: x)
    assert sorted(rank["images"] for rank in two_processes) == [50, 51]
    for rank in two_processes:
        scores = rank["scores"]
        assert scores["images"] == alone["images"] == 101
        assert scores["top1"] == alone["top1"] and scores["top5"] == alone["top5"]
        assert scores["loss"] == pytest.approx(alone["loss"], rel=1e-6)  # summed in float32
