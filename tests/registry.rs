//! The registry under constructors that misbehave: a backend built from other backends (it asks
//! the registry while being created), one that asks for itself, one that lists the registry,
//! and one that panics. None may deadlock or take `list()` / `select()` down for everyone.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use attnforge::registry::BackendEntry;
use attnforge::*;

/// Runs `f` on another thread and fails the test if it does not return in time (a deadlock
/// shows as a timeout, not as a hung test run).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what} did not return within 20 s (deadlock)"))
}

/// Wraps the reference under another name: a composite backend made from a registered one.
struct Wrapper(Backend, &'static str);
impl AttentionBackend for Wrapper {
    fn name(&self) -> &str {
        self.1
    }
    fn device(&self) -> Device {
        self.0.device()
    }
    fn supports(&self, op: Op, p: &ProblemDesc) -> std::result::Result<(), Vec<String>> {
        self.0.inner().supports(op, p)
    }
    fn alloc(&self, s: &[usize], d: DType) -> Result<Tensor> {
        self.0.inner().alloc(s, d)
    }
    fn write(&self, t: &mut Tensor, s: &[f32]) -> Result<()> {
        self.0.inner().write(t, s)
    }
    fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.0.inner().read(t)
    }
    fn fill(&self, t: &mut Tensor, v: f32) -> Result<()> {
        self.0.inner().fill(t, v)
    }
    fn rope(&self, a: RopeArgs<'_>) -> Result<()> {
        self.0.inner().rope(a)
    }
    fn kv_append(&self, a: AppendArgs<'_>) -> Result<()> {
        self.0.inner().kv_append(a)
    }
    fn attention(&self, a: AttentionArgs<'_>) -> Result<()> {
        self.0.inner().attention(a)
    }
    fn attention_plain(&self, a: PlainAttentionArgs<'_>) -> Result<()> {
        self.0.inner().attention_plain(a)
    }
}

fn wrap(inner: &str, name: &'static str) -> std::result::Result<Arc<dyn AttentionBackend>, String> {
    let b = registry::get(inner).map_err(|e| format!("needs `{inner}`: {e}"))?;
    Ok(Arc::new(Wrapper(b, name)))
}

inventory::submit! {
    BackendEntry { name: "test-composite", description: "test: wraps cpu", priority: -5, create: || wrap("cpu", "test-composite") }
}
inventory::submit! {
    BackendEntry { name: "test-composite-2", description: "test: wraps test-composite", priority: -6, create: || wrap("test-composite", "test-composite-2") }
}
inventory::submit! {
    BackendEntry { name: "test-self", description: "test: asks for itself", priority: -7, create: || wrap("test-self", "test-self") }
}
inventory::submit! {
    BackendEntry { name: "test-cycle-a", description: "test: needs test-cycle-b", priority: -8, create: || wrap("test-cycle-b", "test-cycle-a") }
}
inventory::submit! {
    BackendEntry { name: "test-cycle-b", description: "test: needs test-cycle-a", priority: -9, create: || wrap("test-cycle-a", "test-cycle-b") }
}
inventory::submit! {
    BackendEntry {
        name: "test-lister",
        description: "test: lists the registry while being created",
        priority: -10,
        create: || {
            let n = registry::list().len();
            if n > 0 { wrap("cpu", "test-lister") } else { Err("empty registry".into()) }
        },
    }
}
inventory::submit! {
    BackendEntry { name: "test-panics", description: "test: constructor panics", priority: -11, create: || panic!("boom in the constructor") }
}

#[test]
fn constructors_may_use_the_registry_without_deadlock() {
    let b = within("get(test-composite-2)", || registry::get("test-composite-2"));
    assert_eq!(b.unwrap().name(), "test-composite-2");
    let e = within("get(test-self)", || registry::get("test-self")).unwrap_err();
    assert_eq!(e.kind(), "BackendUnavailable");
    assert!(e.to_string().contains("being created"), "{e}");
    let e = within("get(test-cycle-a)", || registry::get("test-cycle-a")).unwrap_err();
    // Which of the two is named first depends on which one a thread asked for first.
    let msg = e.to_string();
    assert!(msg.contains("being created") && msg.contains("test-cycle-a -> test-cycle-b") || msg.contains("test-cycle-b -> test-cycle-a"), "{e}");
    assert_eq!(within("get(test-lister)", || registry::get("test-lister")).unwrap().name(), "test-lister");
}

#[test]
fn constructors_racing_on_threads_do_not_deadlock() {
    let names = ["test-cycle-b", "test-composite-2", "test-lister", "test-self", "test-cycle-a", "test-composite"];
    let handles: Vec<_> = names.iter().map(|&n| std::thread::spawn(move || registry::get(n).is_ok())).collect();
    within("racing constructors", move || handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>());
}

#[test]
fn a_panicking_constructor_makes_only_that_backend_unavailable() {
    let list = within("list()", registry::list);
    let p = list.iter().find(|b| b.name == "test-panics").unwrap();
    let why = p.available.as_ref().unwrap_err();
    assert!(why.contains("panicked") && why.contains("boom in the constructor"), "{why}");
    assert!(list.iter().find(|b| b.name == "cpu").unwrap().available.is_ok());
    let e = registry::get("test-panics").unwrap_err();
    assert_eq!(e.kind(), "BackendUnavailable");
    let problem = ProblemDesc::step(DType::F32, 4, 2, RopeConfig::new(8, 1e4, 64), CacheLayout::Contiguous { capacity: 8 });
    let s = registry::select_with(&problem, None).unwrap();
    assert!(s.rejected.iter().any(|(n, why)| n == "test-panics" && why.contains("panicked")));
}

#[test]
fn linked_lists_every_backend_the_facade_links() {
    let linked = registry::linked();
    let names = registry::names();
    assert!(linked.contains(&"cpu"));
    #[cfg(feature = "hip-core")]
    for n in ["hip-flash", "hip-hybrid", "hip-fused", "hip-separate"] {
        assert!(linked.contains(&n), "{n} missing from linked() = {linked:?}");
    }
    for n in linked {
        assert!(names.contains(&n.to_string()), "{n} is linked but not registered");
    }
}

/// A test backend on three "devices": a wrapper of cpu per ordinal, counting constructions.
static MADE_ON: std::sync::Mutex<Vec<(usize, bool)>> = std::sync::Mutex::new(Vec::new());

fn made_on(ordinal: usize, own: bool) -> std::result::Result<Arc<dyn AttentionBackend>, String> {
    MADE_ON.lock().unwrap().push((ordinal, own));
    wrap("cpu", "test-multi")
}

inventory::submit! {
    BackendEntry { name: "test-multi", description: "test: three devices", priority: -12, create: || made_on(0, false) }
}
inventory::submit! {
    registry::DeviceBackendEntry { name: "test-multi", device_count: || 3, create_on: made_on }
}

#[test]
fn instances_per_device_and_typed_errors_for_missing_devices() {
    // Host backends run on one device.
    assert_eq!(registry::device_count("cpu").unwrap(), 1);
    let e = registry::get_on("cpu", 1).unwrap_err();
    assert_eq!(e.kind(), "NoSuchDevice");
    assert!(e.to_string().contains("no device 1") && e.to_string().contains("sees 1"), "{e}");
    assert_eq!(registry::create_on("cpu", 2).unwrap_err().kind(), "NoSuchDevice");
    assert_eq!(registry::get_on("nosuch", 0).unwrap_err().kind(), "UnknownBackend");
    // A fresh cpu instance is not the shared one.
    let shared = registry::get("cpu").unwrap();
    let fresh = registry::create_on("cpu", 0).unwrap();
    assert!(!std::ptr::addr_eq(shared.inner(), fresh.inner()), "create_on makes a new instance");

    // A backend with a device entry: shared instances once per ordinal on the device's shared
    // stream, fresh ones with their own, ordinals past the count refused.
    assert_eq!(registry::device_count("test-multi").unwrap(), 3);
    let a = registry::get_on("test-multi", 2).unwrap();
    let b = registry::get_on("test-multi", 2).unwrap();
    assert!(std::ptr::addr_eq(a.inner(), b.inner()), "get_on shares its instance");
    let c = registry::create_on("test-multi", 2).unwrap();
    assert!(!std::ptr::addr_eq(a.inner(), c.inner()), "create_on makes a new one");
    let e = registry::get_on("test-multi", 3).unwrap_err();
    assert_eq!((e.kind(), e.to_string().contains("sees 3")), ("NoSuchDevice", true), "{e}");
    let made = MADE_ON.lock().unwrap().clone();
    assert!(made.contains(&(2, false)) && made.contains(&(2, true)), "{made:?}");
    assert_eq!(made.iter().filter(|m| **m == (2, false)).count(), 1, "the shared instance is made once: {made:?}");
}

#[test]
fn select_on_a_device_picks_among_the_instances_there() {
    let problem = ProblemDesc::step(DType::F32, 4, 2, RopeConfig::new(64, 10000.0, 64), CacheLayout::Contiguous { capacity: 8 });
    // Device 2: only test-multi has one (cpu and the others see one device).
    let sel = registry::select_on(&problem, None, 2).unwrap();
    assert_eq!(sel.backend.name(), "test-multi");
    let cpu_why = sel.rejected.iter().find(|(n, _)| n == "cpu").map(|(_, w)| w.clone()).unwrap();
    assert!(cpu_why.contains("no device 2"), "{cpu_why}");
    assert_eq!(registry::select_on(&problem, Some("cpu"), 2).unwrap_err().kind(), "NoSuchDevice");
    assert_eq!(registry::select_on(&problem, Some("cpu"), 0).unwrap().backend.name(), "cpu");
}
