//! Tests of the vendor-neutral runtime against the fake driver (runtime/fake.rs): what the
//! staging ring, device binding, the kernel table and the launchers do when the device or the
//! caller misbehaves. They run on every CI machine; the same code drives NVIDIA and AMD GPUs.

use super::fake::{fake_images, h100_props, FakeDriver};
use super::launch::attention::{attention, AttnCall, AttnLaunch, KvAddressing, KvSource};
use super::launch::kv_append::append;
use super::launch::PoolMut;
use super::staging::{STAGE_BYTES, STAGE_SLOTS};
use super::*;
use crate::contract::{Kernel, DC_THREADS};
use attnforge_api::DType;

fn gpu_on(fake: &FakeDriver) -> Gpu {
    Gpu::with_driver(Box::new(fake.clone()), &fake_images()).expect("the fake opens")
}

#[test]
fn every_kernel_is_resolved_once_at_load_without_probing() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    assert_eq!(fake.lookups_failed(), 0, "a lookup failed while loading: the table probed");
    assert_eq!(gpu.inner.dev.kernels.len(), Kernel::all().len());
    // A build missing one kernel cannot open, and says which.
    let broken = FakeDriver::new(0, h100_props());
    broken.remove_symbol("attn_merge_bf16");
    let e = Gpu::with_driver(Box::new(broken), &fake_images()).unwrap_err();
    assert!(e.contains("attn_merge_bf16") && e.contains("attention"), "{e}");
}

#[test]
fn allocations_are_zero_filled_and_round_trip() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    let mut b = gpu.alloc(3 * STAGE_BYTES + 17).unwrap();
    assert!(gpu.read(b.view(), b.len()).unwrap().iter().all(|&x| x == 0), "fresh device memory reads as zeros");
    let data: Vec<u8> = (0..b.len()).map(|i| (i * 7 % 251) as u8).collect();
    gpu.write(b.view_mut(), 0, &data).unwrap();
    assert_eq!(gpu.read(b.view(), b.len()).unwrap(), data, "chunked staging keeps order across slots");
    assert!(gpu.write(b.view_mut(), 5, &data).is_err(), "a write past the end is refused");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn a_staging_slot_whose_copy_cannot_be_tracked_is_never_reused() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    // The copy is queued, then recording its completion fails: the slot's pinned bytes may still
    // be read by that copy at any later time.
    fake.fail("event_record", 1);
    let mut dst = gpu.alloc(64).unwrap();
    assert!(gpu.write(dst.view_mut(), 0, &[0xA1; 64]).is_err());
    // Many more uploads cycle through the ring; none may overwrite the untracked slot.
    let mut others = Vec::new();
    for i in 0..4 * STAGE_SLOTS {
        others.push(gpu.upload(&[i as u8; 64]).unwrap());
    }
    gpu.synchronize().unwrap();
    assert_eq!(gpu.read(dst.view(), 64).unwrap(), vec![0xA1; 64], "the delayed copy read bytes a later upload wrote into its slot");
    for (i, b) in others.iter().enumerate() {
        assert_eq!(gpu.read(b.view(), 64).unwrap(), vec![i as u8; 64]);
    }
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn a_failed_download_never_frees_memory_its_copy_may_still_target() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    let b = gpu.upload(&[7u8; 4096]).unwrap();
    gpu.synchronize().unwrap();
    // The copy into the slot is queued; waiting for it fails (the slot's earlier wait passes):
    // it may still be running when read() returns.
    fake.fail_after("event_sync", 1, 1);
    assert!(gpu.read(b.view(), 4096).is_err());
    // The device goes away while that copy is still queued and cannot be waited for: its
    // pinned memory must stay allocated (the fake records freeing it as a violation).
    fake.fail("stream_sync", 1);
    drop(b);
    drop(gpu);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn a_gpu_used_from_another_thread_makes_its_device_current_there() {
    // Device 1 opened here; the other thread starts with no device current (as a fresh thread
    // in HIP, or one whose last call was for another device).
    let fake = FakeDriver::new(1, h100_props());
    let gpu = gpu_on(&fake);
    let g = gpu.clone();
    std::thread::spawn(move || {
        let mut b = g.alloc(256).expect("alloc from another thread");
        g.write(b.view_mut(), 0, &[3u8; 256]).expect("write from another thread");
        assert_eq!(g.read(b.view(), 256).expect("read from another thread"), vec![3u8; 256]);
        let src = g.upload(&[1u8; 256]).unwrap();
        g.copy(b.view_mut(), src.view(), 256).expect("copy from another thread");
        g.synchronize().expect("synchronize from another thread");
        g.time(1, || Ok(())).expect("timing from another thread");
    })
    .join()
    .unwrap();
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

fn pool(gpu: &Gpu, slots: usize, hk: usize, d: usize) -> (DeviceBuffer, DeviceBuffer) {
    (gpu.alloc(slots * hk * d * 2).unwrap(), gpu.alloc(slots * hk * d * 2).unwrap())
}

#[test]
fn launchers_refuse_what_would_index_outside_memory_and_launch_nothing() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    let (hk, d, slots) = (2usize, 64usize, 32usize);
    let (mut pk, mut pv) = pool(&gpu, slots, hk, d);
    let k = gpu.alloc(4 * hk * d * 2).unwrap();
    // A slot past the pool.
    let meta = gpu.upload_meta(&[&[0, 1, 2, slots as i32]]).unwrap();
    let p = PoolMut { k: pk.view_mut(), v: pv.view_mut(), pos: None, slots, scales: None };
    let e = append(&gpu, Kernel::KvAppend { dtype: DType::F16, fp8: false }, 4, hk, d, st(k.view(), hk * d), st(k.view(), hk * d), p, meta.part(0), None).unwrap_err();
    assert!(e.to_string().contains("slot mapping"), "{e}");
    // K/V rows too short for the tokens.
    let meta = gpu.upload_meta(&[&[0, 1, 2, 3, 4]]).unwrap();
    let p = PoolMut { k: pk.view_mut(), v: pv.view_mut(), pos: None, slots, scales: None };
    assert_eq!(
        append(&gpu, Kernel::KvAppend { dtype: DType::F16, fp8: false }, 5, hk, d, st(k.view(), hk * d), st(k.view(), hk * d), p, meta.part(0), None).unwrap_err().kind(),
        "StorageTooSmall"
    );

    // Attention over pages: a page past the pool, a table too short for the keys, a
    // contiguous entry whose keys run past the pool, a split too long for the vector decode.
    let (h, ps) = (4usize, 8usize);
    let q = gpu.alloc(h * d * 2).unwrap();
    let mut out = gpu.alloc(h * d * 2).unwrap();
    let launch = AttnLaunch::Decode {
        kernel: Kernel::Decode { dim: 64, rows: 4, rope: crate::contract::InKernelRope::None, dtype: DType::F16 },
        rows_per_block: 4,
        splits: 1,
        stages: 1,
        block: DC_THREADS,
        shared: 0,
        max_keys_per_split: Some(1024),
        merge: Kernel::Merge { dtype: DType::F16 },
    };
    let cases: Vec<(KvAddressing<'_>, usize, &str)> = vec![
        (KvAddressing::Pages { page_size: ps, tables: vec![&[1, 4]] }, 12, "PageTableOutOfRange"),
        (KvAddressing::Pages { page_size: ps, tables: vec![&[1]] }, 12, "InvalidArgument"),
        (KvAddressing::Rows(&[30]), 5, "InvalidArgument"),
        (KvAddressing::Rows(&[0]), 2000, "InvalidArgument"),
    ];
    let (big_k, big_v) = pool(&gpu, 2048, hk, d);
    for (at, kv_len, want) in cases {
        let (kk, vv, rows) = if kv_len > slots { (big_k.view(), big_v.view(), 2048) } else { (pk.view(), pv.view(), slots) };
        let call = AttnCall {
            dtype: DType::F16,
            heads: h,
            head_dim: d,
            q: st(q.view(), h * d),
            out: st(out.view_mut(), h * d),
            q_lens: &[1],
            kv_lens: &[kv_len],
            kv: KvSource { k: st(kk, hk * d), v: st(vv, hk * d), rows, kv_heads: hk, at, scales: None },
            causal: true,
            scale: 0.125,
            softcap: 0.0,
            window: 0,
            sinks: None,
            lse: None,
            rope: None,
        };
        let e = attention(&gpu, &launch, call).unwrap_err();
        assert_eq!(e.kind(), want, "{e}");
    }
    assert!(fake.launches().is_empty(), "a refused launch still reached the device: {:?}", fake.launches());

    // Memory of another device is refused.
    let other = gpu_on(&FakeDriver::new(3, h100_props()));
    let foreign = other.alloc(h * d * 2).unwrap();
    let call = AttnCall {
        dtype: DType::F16,
        heads: h,
        head_dim: d,
        q: st(foreign.view(), h * d),
        out: st(out.view_mut(), h * d),
        q_lens: &[1],
        kv_lens: &[4],
        kv: KvSource { k: st(pk.view(), hk * d), v: st(pv.view(), hk * d), rows: slots, kv_heads: hk, at: KvAddressing::Rows(&[0]), scales: None },
        causal: true,
        scale: 0.125,
            softcap: 0.0,
            window: 0,
            sinks: None,
            lse: None,
        rope: None,
    };
    assert!(attention(&gpu, &launch, call).unwrap_err().to_string().contains("lives on"));

    // A valid call launches exactly the planned kernel.
    let call = AttnCall {
        dtype: DType::F16,
        heads: h,
        head_dim: d,
        q: st(q.view(), h * d),
        out: st(out.view_mut(), h * d),
        q_lens: &[1],
        kv_lens: &[12],
        kv: KvSource { k: st(pk.view(), hk * d), v: st(pv.view(), hk * d), rows: slots, kv_heads: hk, at: KvAddressing::Pages { page_size: ps, tables: vec![&[3, 0]] }, scales: None },
        causal: true,
        scale: 0.125,
        softcap: 0.0,
        window: 0,
        sinks: None,
            lse: None,
        rope: None,
    };
    attention(&gpu, &launch, call).unwrap();
    let l = fake.launches();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].symbol, "attn_decode_d64_r4_f16");
    assert_eq!(l[0].grid, [2, 1, 1]);
    assert_eq!((l[0].block, l[0].shared), (DC_THREADS as u32, 0));
    // The parameter struct as the kernel receives it: head_dim and page size in place.
    let p = crate::contract::AttnParams::default();
    let off = |f: *const i32| (f as usize) - (&p as *const _ as usize);
    let at = |o: usize| i32::from_le_bytes(l[0].params[o..o + 4].try_into().unwrap());
    assert_eq!(at(off(&p.head_dim)), 64);
    assert_eq!(at(off(&p.page_size)), ps as i32);
}

#[test]
fn launch_shapes_past_the_device_limits_are_refused() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    let p = crate::contract::FillParams::default();
    let k = Kernel::Fill { dtype: DType::F32 };
    // SAFETY: these launches are refused before reaching the device (checked below).
    unsafe {
        assert!(gpu.launch(k, [1, 70_000, 1], 256, 0, &p).is_err(), "grid.y past 65535");
        assert!(gpu.launch(k, [1, 1, 1], 2048, 0, &p).is_err(), "block past 1024 threads");
        assert!(gpu.launch(k, [1, 1, 1], 256, 300_000, &p).is_err(), "shared memory past the opt-in limit");
        let wrong = crate::contract::AppendParams::default();
        assert!(gpu.launch(k, [1, 1, 1], 256, 0, &wrong).is_err(), "the wrong parameter struct");
    }
    assert!(fake.launches().is_empty());
}

/// Dense rows of `row` elements.
fn st<V>(mem: V, row: usize) -> crate::runtime::launch::Strided<V> {
    crate::runtime::launch::Strided { mem, stride: row }
}

/// A caller's stream that says which device it belongs to (cudarc's) is refused on another.
#[test]
fn a_stream_of_another_device_is_refused() {
    let fake = FakeDriver::new(0, h100_props());
    let loaded = Gpu::load_driver(Box::new(fake.clone()), &fake_images()).unwrap();
    let other = crate::runtime::foreign::ForeignStream { raw: 0x1000, keep: None, ordinal: Some(3) };
    assert_eq!(Gpu::on_foreign(&loaded, other).unwrap_err().kind(), "WrongDevice");
    let null = crate::runtime::foreign::ForeignStream { raw: 0, keep: None, ordinal: Some(0) };
    assert_eq!(Gpu::on_foreign(&loaded, null).unwrap_err().kind(), "InvalidArgument");
}

#[test]
fn the_sm90a_prefill_reads_through_tensor_maps_of_exactly_its_views() {
    let fake = FakeDriver::new(0, h100_props());
    let gpu = gpu_on(&fake);
    let (h, hk, d, rows, tq) = (4usize, 2usize, 64usize, 256usize, 200usize);
    let q = gpu.alloc(tq * h * d * 2).unwrap();
    let mut out = gpu.alloc(tq * h * d * 2).unwrap();
    let (pk, pv) = pool(&gpu, rows, hk, d);
    let launch = AttnLaunch::Tiled { kernel: Kernel::WgPrefill { dim: 64, dtype: DType::F16 }, tile_rows: crate::contract::WG_BM, block: crate::contract::WG_THREADS, shared: 82_944 }; // plan::wgmma_shared_bytes(64)
    #[allow(clippy::too_many_arguments)]
    fn call<'a>(q: DevRef<'a>, out: DevMut<'a>, k: DevRef<'a>, v: DevRef<'a>, at: KvAddressing<'a>, kv_rows: usize, h: usize, hk: usize, d: usize) -> AttnCall<'a> {
        AttnCall {
            dtype: DType::F16,
            heads: h,
            head_dim: d,
            q: st(q, h * d),
            out: st(out, h * d),
            q_lens: &[100, 100],
            kv_lens: &[150, 100],
            kv: KvSource { k: st(k, hk * d), v: st(v, hk * d), rows: kv_rows, kv_heads: hk, at, scales: None },
            causal: true,
            scale: 0.125,
            softcap: 0.0,
            window: 0,
            sinks: None,
            lse: None,
            rope: None,
        }
    }
    // Pages are not TMA boxes: refused, nothing launched.
    let e = attention(&gpu, &launch, call(q.view(), out.view_mut(), pk.view(), pv.view(), KvAddressing::Pages { page_size: 16, tables: vec![&[0u32; 10][..], &[1u32; 7][..]] }, rows, h, hk, d)).unwrap_err();
    assert!(e.to_string().contains("contiguous"), "{e}");
    // K/V rows the views do not hold: refused before any map is made.
    assert!(attention(&gpu, &launch, call(q.view(), out.view_mut(), pk.view(), pv.view(), KvAddressing::Rows(&[0, 128]), 2 * rows, h, hk, d)).is_err());
    assert!(fake.launches().is_empty(), "{:?}", fake.launches());
    // A valid call: one launch of WgParams whose maps name the views (the fake's map holds the address).
    attention(&gpu, &launch, call(q.view(), out.view_mut(), pk.view(), pv.view(), KvAddressing::Rows(&[0, 128]), rows, h, hk, d)).unwrap();
    let l = fake.launches();
    assert_eq!((l.len(), l[0].symbol.as_str(), l[0].block), (1, "attn_prefill_wgmma_d64_f16", crate::contract::WG_THREADS as u32));
    assert_eq!(l[0].params.len(), std::mem::size_of::<crate::contract::WgParams>());
    assert_eq!(l[0].grid, [2, h as u32, 1], "one 128-row tile per entry");
    let word = |i: usize| u64::from_le_bytes(l[0].params[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!([word(0), word(16), word(32)], [q.view().addr, pk.view().addr, pv.view().addr]);
    // Gpu::tensor_map's own checks: a stride that breaks 16-byte rows, a view too short.
    assert!(gpu.tensor_map("K", &pk.view(), DType::F16, d, hk, rows, hk * d + 4, 128).is_err());
    assert!(gpu.tensor_map("K", &pk.view(), DType::F16, d, hk, rows + 1, hk * d, 128).is_err());
    assert!(gpu.tensor_map("K", &pk.view(), DType::F32, d, hk, rows, hk * d, 128).is_err());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
