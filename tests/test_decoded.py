"""Decoded-once training data: decoded once, augmented as a pure function of (seed, epoch, index)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from textrefiner.data import DecodedImageDataset, ImageDataset, load_dataset, make_fake_dataset, transforms_from_processor
from textrefiner.data import decoded as decoded_module


def _processor():
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})


@pytest.fixture(scope="module")
def train_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset(root, "eurosat", num_classes=4, images_per_class=8, image_size=40, seed=0)
    return load_dataset("eurosat", root, shots=4, seed=1).train


def _dataset(items, seed=3, **kw):
    return DecodedImageDataset(items, transforms_from_processor(_processor(), train=True), seed=seed, **kw)


def test_images_are_decoded_once_at_construction(train_items, monkeypatch):
    calls = []
    real = decoded_module.load_image
    monkeypatch.setattr(decoded_module, "load_image", lambda p: (calls.append(p), real(p))[1])
    ds = _dataset(train_items)
    assert len(calls) == len(train_items)
    for epoch in range(2):
        ds.set_epoch(epoch)
        _ = [ds[i] for i in range(len(ds))]
    assert len(calls) == len(train_items)  # no decode per sample or per epoch
    assert [im.size for im in ds.images] == [real(item.impath).size for item in train_items]  # original resolution


def test_size_cap_is_opt_in(train_items):
    capped, full = _dataset(train_items, max_side=30), _dataset(train_items)
    assert all(max(c.size) == min(30, max(f.size)) for c, f in zip(capped.images, full.images))
    assert any(max(f.size) > 30 for f in full.images)


def test_augmentation_is_a_pure_function_of_seed_epoch_index(train_items):
    a, b = _dataset(train_items), _dataset(train_items)
    torch.manual_seed(123)  # the global RNG plays no part
    x, y = a[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 24, 24) and y == train_items[5].label
    assert torch.equal(x, b[5][0])
    b.set_epoch(1)
    assert not torch.equal(x, b[5][0])  # another epoch, another draw
    assert not torch.equal(x, _dataset(train_items, seed=4)[5][0])  # another seed, another draw


def test_loader_batches_do_not_depend_on_the_worker_count(train_items):
    ds = _dataset(train_items)
    ds.set_epoch(2)

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=workers)
        return [x for x, _ in loader]

    for x0, x2 in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x0, x2)


def test_batches_equal_the_per_file_pil_path_bit_for_bit(train_items):
    """Same draws, same filter, same normalisation arithmetic: only the repeated decoding is gone."""
    transform = transforms_from_processor(_processor(), train=True)
    ours = _dataset(train_items)
    pil = ImageDataset(train_items, transform, seed=3)
    for epoch in (0, 1):
        ours.set_epoch(epoch)
        pil.set_epoch(epoch)
        batch = ours.batch_transform(torch.stack([ours[i][0] for i in range(len(train_items))]))
        assert batch.dtype == torch.float32
        assert torch.equal(batch, torch.stack([pil[i][0] for i in range(len(train_items))]))
    raw = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    torch.testing.assert_close(ours.batch_transform(raw), torch.stack([transform.normalise(r) for r in raw]), atol=1e-6, rtol=0)


def test_only_train_transforms_are_accepted(train_items):
    with pytest.raises(TypeError, match="expected a TrainTransform"):
        DecodedImageDataset(train_items, transforms_from_processor(_processor(), train=False), seed=1)


# ---------------------------------------------------------------- augmenting on the device
@pytest.fixture(scope="module")
def mixed_items(tmp_path_factory):
    """Images of several sizes and shapes, so crops take both of Pillow's pass orders."""
    from PIL import Image

    from textrefiner.data import Item

    root = tmp_path_factory.mktemp("mixed")
    g = torch.Generator().manual_seed(0)
    items = []
    for i, (w, h) in enumerate([(90, 60), (40, 120), (64, 64), (150, 37), (33, 33), (75, 110)] * 2):
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
        path = root / f"{i}.png"
        Image.frombytes("RGB", (w, h), pixels.numpy().tobytes()).save(path)
        items.append(Item(impath=str(path), label=i % 3, classname=f"c{i % 3}"))
    return items


def _processor_with(resample: int):
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}, resample=resample)


@pytest.mark.parametrize("resample", [3, 2, 4], ids=["bicubic", "bilinear", "box"])
def test_device_augmentation_equals_the_pil_path_bit_for_bit(mixed_items, resample):
    from textrefiner.data import resample as resample_module

    transform = transforms_from_processor(_processor_with(resample), train=True)
    device = DecodedImageDataset(mixed_items, transform, seed=3, augment_on="device")
    pil = ImageDataset(mixed_items, transform, seed=3)
    orders = set()
    for epoch in (0, 1, 2):
        device.set_epoch(epoch)
        pil.set_epoch(epoch)
        crops, labels = device.collate([device[i] for i in range(len(mixed_items))])
        orders |= {g.horizontal_first for g in crops.groups}
        assert torch.equal(device.batch_transform(crops), torch.stack([pil[i][0] for i in range(len(mixed_items))]))
        assert labels.tolist() == [item.label for item in mixed_items]
        assert crops.flip.any() and not crops.flip.all()  # both branches of the flip ran
    assert orders == ({True, False} if resample_module.pass_order() == "shrink" else {True})


def test_device_batches_do_not_depend_on_workers_or_chunking(mixed_items, monkeypatch):
    ds = DecodedImageDataset(mixed_items, transforms_from_processor(_processor(), train=True), seed=5, augment_on="device")
    ds.set_epoch(1)

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=workers, collate_fn=ds.collate_fn)
        return [ds.batch_transform(crops.to("cpu")) for crops, _ in loader]

    whole = batches(0)
    assert all(len(whole) == 3 and x.shape == (4, 3, 24, 24) for x in whole)
    for x0, x2 in zip(whole, batches(2), strict=True):
        assert torch.equal(x0, x2)
    monkeypatch.setattr(decoded_module, "CHUNK_BYTES", 1)  # every crop resized in its own product
    crops, _ = ds.collate([ds[i] for i in range(4)])
    assert len(crops.groups) == 4 and all(g.rows.numel() == 1 for g in crops.groups)
    ref = DecodedImageDataset(mixed_items, ds.transform, seed=5)
    ref.set_epoch(1)
    assert torch.equal(ds.batch_transform(crops), ref.batch_transform(torch.stack([ref[i][0] for i in range(4)])))


def test_device_batch_transform_makes_no_host_sync(mixed_items):
    from _syncs import SyncCounter

    ds = DecodedImageDataset(mixed_items, transforms_from_processor(_processor(), train=True), seed=5, augment_on="device")
    crops, _ = ds.collate([ds[i] for i in range(len(ds))])
    ds.batch_transform(crops)  # first call: the normalisation constants are made for the device
    with SyncCounter() as syncs:
        ds.batch_transform(crops)
    assert syncs.total == 0, dict(syncs.where)


def test_device_augmentation_refuses_what_it_cannot_reproduce(mixed_items):
    with pytest.raises(ValueError, match="lanczos.*bicubic.*augment in the workers"):
        DecodedImageDataset(mixed_items, transforms_from_processor(_processor_with(1), train=True), seed=1, augment_on="device")
    with pytest.raises(ValueError, match="augment_on in"):
        DecodedImageDataset(mixed_items, transforms_from_processor(_processor(), train=True), seed=1, augment_on="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_augmentation_on_cuda_is_pinned_sync_free_and_equal(mixed_items):
    ds = DecodedImageDataset(mixed_items, transforms_from_processor(_processor(), train=True), seed=5, augment_on="device")
    crops, _ = ds.collate([ds[i] for i in range(len(ds))])
    pinned = crops.pin_memory()
    assert pinned.flip.is_pinned() and all(g.pixels.is_pinned() for g in pinned.groups)
    on_gpu = pinned.to("cuda", non_blocking=True)
    ds.batch_transform(on_gpu)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = ds.batch_transform(on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(x.cpu(), ds.batch_transform(crops))


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_workers_that_persist_across_epochs_draw_each_epochs_augmentations(mixed_items, augment_on):
    """The engine starts its loader workers once per run; the sampler tells them the epoch."""
    from textrefiner.data.batches import GlobalBatchSampler

    ds = DecodedImageDataset(mixed_items, transforms_from_processor(_processor(), train=True), seed=2, augment_on=augment_on)

    def fresh(epoch):  # what a loader made for this epoch alone gives, in this process
        ds.set_epoch(epoch)
        sampler = GlobalBatchSampler(len(ds), 4, seed=2, epoch=epoch)
        return [ds.batch_transform(x) for x, _ in DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate_fn)]

    sampler = GlobalBatchSampler(len(ds), 4, seed=2, epoch=0, tag_epoch=True)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, persistent_workers=True, collate_fn=ds.collate_fn)
    seen = []
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        got = [ds.batch_transform(x) for x, _ in loader]
        want = fresh(epoch)
        assert len(got) == len(want) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))
        seen.append(torch.cat(got))
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])  # each epoch its own draw


def test_decoding_stops_with_a_clear_error_past_the_memory_budget(mixed_items, monkeypatch):
    calls = []
    real = decoded_module.decode
    monkeypatch.setattr(decoded_module, "decode", lambda *a: (calls.append(a), real(*a))[1])
    monkeypatch.setattr(decoded_module, "_decode_threads", lambda: 2)  # 4 images decoded ahead at most
    transform = transforms_from_processor(_processor(), train=True)
    with pytest.raises(MemoryError, match=r"decoding the 12 training images once would take about 168 KiB \(3 took 42 KiB\), more than the 39 KiB allowed"):
        DecodedImageDataset(mixed_items, transform, seed=1, augment_on="device", memory_budget=40_000)  # 90x60, 40x120, 64x64 px pass it
    assert len(calls) <= 6  # stopped early: the 3 images that passed the budget and at most 3 more in flight
    ds = DecodedImageDataset(mixed_items, transform, seed=1, augment_on="device", memory_budget=10**9)
    assert ds.nbytes == sum(3 * im.shape[1] * im.shape[2] for im in ds.images) < 10**9
