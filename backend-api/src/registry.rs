//! The backend registry. Backend crates register a [`BackendEntry`] at link time with
//! `inventory::submit!`; the registry freezes the entries into a sorted map on first use
//! (a name registered twice is refused, never "last one wins"), creates each backend lazily
//! and once, and picks one for a problem.
//!
//! ```
//! use attnforge_api::registry;
//! for info in registry::list() {
//!     println!("{} (priority {}): {:?}", info.name, info.priority, info.available);
//! }
//! assert!(registry::get("nosuch").is_err());
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use crate::{AttentionBackend, Backend, Error, ProblemDesc, Result};

/// Environment variable that forces [`select`] to one backend by name.
pub const BACKEND_ENV: &str = "ATTNFORGE_BACKEND";

/// Constructor of a backend: the instance, or why it cannot be created here. It may itself ask
/// the registry for other backends (a composite backend wrapping others); asking for itself,
/// directly or through others, gets an `Err` explaining the cycle instead of a deadlock.
pub type Constructor = fn() -> std::result::Result<Arc<dyn AttentionBackend>, String>;

/// One registered backend, submitted with `inventory::submit!`.
pub struct BackendEntry {
    /// Unique name (`cpu`, `hip-flash`, ...).
    pub name: &'static str,
    /// One line for listings.
    pub description: &'static str,
    /// Higher wins in [`select`].
    pub priority: i32,
    /// Creates the backend, or says why it is unavailable (no GPU, no driver, no kernels).
    pub create: Constructor,
}

inventory::collect!(BackendEntry);

/// Per-device constructor of a backend: a new instance on device `ordinal`, or why it cannot be
/// created there. `own_stream`: the instance gets a stream of its own ([`create_on`]); else it
/// shares the device's default stream with the other shared instances on that device ([`get`],
/// [`get_on`]), so their tensors can be passed between them.
pub type DeviceConstructor = fn(ordinal: usize, own_stream: bool) -> std::result::Result<Arc<dyn AttentionBackend>, String>;

/// The per-device side of a registered backend, submitted next to its [`BackendEntry`] (same
/// name) by backends that run on one of several devices. A backend without one runs on one
/// device (ordinal 0): [`get_on`] and [`create_on`] use its [`BackendEntry::create`].
pub struct DeviceBackendEntry {
    /// The name of its [`BackendEntry`].
    pub name: &'static str,
    /// Devices visible to the backend (0 when none is: no driver, no GPU).
    pub device_count: fn() -> usize,
    /// Creates an instance on one of them.
    pub create_on: DeviceConstructor,
}

inventory::collect!(DeviceBackendEntry);

/// A backend as [`list`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// Registry name.
    pub name: String,
    /// One line description.
    pub description: String,
    /// Selection priority.
    pub priority: i32,
    /// `Ok` if it can be created here, else the reason.
    pub available: std::result::Result<(), String>,
}

struct Slot {
    entry: &'static BackendEntry,
    duplicate: bool,
    instance: OnceLock<std::result::Result<Backend, String>>,
}

/// One construction at a time, process-wide: taken by the outermost construction of a thread
/// and not again by the constructions it triggers (a constructor asking the registry for other
/// backends), so constructors that need each other cannot deadlock across threads.
static CONSTRUCTION: Mutex<()> = Mutex::new(());

thread_local! {
    /// The backends this thread is constructing, outermost first.
    static BUILDING: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "(no message)".into())
}

/// The registry's slot of `name`, or `UnknownBackend` listing the known names.
fn slot(name: &str) -> Result<&'static Slot> {
    REGISTRY.get(name).ok_or_else(|| Error::UnknownBackend { name: name.to_string(), known: names() })
}

/// Runs constructor `f` of backend `name` under the construction rules: one outermost
/// construction at a time, cycles refused, panics caught.
fn construct(name: &'static str, f: impl FnOnce() -> std::result::Result<Arc<dyn AttentionBackend>, String> + std::panic::UnwindSafe) -> std::result::Result<Backend, String> {
    if BUILDING.with(|b| b.borrow().contains(&name)) {
        let chain = BUILDING.with(|b| b.borrow().join(" -> "));
        return Err(format!("`{name}` was asked for while it is being created ({chain} -> {name}): constructors must not depend on themselves"));
    }
    BUILDING.with(|b| b.borrow_mut().push(name));
    let made = {
        let _span = tracing::debug_span!("create_backend", name).entered();
        std::panic::catch_unwind(f).map_err(|p| format!("its constructor panicked: {}", panic_message(p.as_ref()))).and_then(|r| r.map(Backend::new))
    };
    BUILDING.with(|b| b.borrow_mut().pop());
    made
}

/// `cell`'s backend, made by `f` once (under the construction lock; see [`construct`]).
fn once(
    name: &'static str,
    cell: &OnceLock<std::result::Result<Backend, String>>,
    f: impl FnOnce() -> std::result::Result<Arc<dyn AttentionBackend>, String> + std::panic::UnwindSafe,
) -> std::result::Result<Backend, String> {
    if let Some(done) = cell.get() {
        return done.clone();
    }
    if BUILDING.with(|b| b.borrow().contains(&name)) {
        return construct(name, f); // the cycle error
    }
    let outermost = BUILDING.with(|b| b.borrow().is_empty());
    // A constructor that panicked while holding the lock poisons it; the lock guards no data.
    let _guard = outermost.then(|| CONSTRUCTION.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(done) = cell.get() {
        return done.clone(); // another thread created it while this one waited
    }
    let made = construct(name, f);
    // Only this thread constructs (the lock), so nobody set it meanwhile.
    cell.get_or_init(|| made).clone()
}

impl Slot {
    fn instance(&self) -> std::result::Result<Backend, String> {
        let name = self.entry.name;
        if self.duplicate {
            return Err(format!("the name `{name}` is registered by more than one backend; refusing both"));
        }
        once(name, &self.instance, self.entry.create)
    }

    /// The per-device constructor of this backend, if it registered one.
    fn on_device(&self) -> Option<&'static DeviceBackendEntry> {
        inventory::iter::<DeviceBackendEntry>.into_iter().find(|d| d.name == self.entry.name)
    }

    /// Devices this backend can run on: its device entry's count, else one (host backends).
    fn device_count(&self) -> usize {
        self.on_device().map_or(1, |d| (d.device_count)())
    }

    /// A new instance on device `ordinal` (checked against the count).
    fn create_on(&self, ordinal: usize) -> Result<Backend> {
        let name = self.entry.name;
        if self.duplicate {
            return self.instance().map_err(|reason| Error::BackendUnavailable { backend: name.into(), reason });
        }
        let count = self.device_count();
        if count == 0 {
            // No device at all: the constructor's own reason (no driver, no kernels).
            return self.instance().and_then(|_| Err("it sees no device".into())).map_err(|reason| Error::BackendUnavailable { backend: name.into(), reason });
        }
        if ordinal >= count {
            return Err(Error::NoSuchDevice { backend: name.into(), ordinal, count });
        }
        let made = match self.on_device() {
            Some(d) => {
                let f = d.create_on;
                let _guard = BUILDING.with(|b| b.borrow().is_empty()).then(|| CONSTRUCTION.lock().unwrap_or_else(|e| e.into_inner()));
                construct(name, move || f(ordinal, true))
            }
            None => {
                let _guard = BUILDING.with(|b| b.borrow().is_empty()).then(|| CONSTRUCTION.lock().unwrap_or_else(|e| e.into_inner()));
                construct(name, self.entry.create)
            }
        };
        made.map_err(|reason| Error::BackendUnavailable { backend: name.into(), reason })
    }
}

static REGISTRY: LazyLock<BTreeMap<&'static str, Slot>> = LazyLock::new(|| {
    let mut map: BTreeMap<&'static str, Slot> = BTreeMap::new();
    for entry in inventory::iter::<BackendEntry> {
        match map.get_mut(entry.name) {
            Some(slot) => slot.duplicate = true,
            None => {
                map.insert(entry.name, Slot { entry, duplicate: false, instance: OnceLock::new() });
            }
        }
    }
    map
});

/// Every registered name, sorted.
pub fn names() -> Vec<String> {
    REGISTRY.keys().map(|s| s.to_string()).collect()
}

/// Every registered backend with its availability, highest priority first. Creates each
/// backend (once) to learn whether it is available.
pub fn list() -> Vec<BackendInfo> {
    let mut v: Vec<BackendInfo> = REGISTRY
        .values()
        .map(|slot| BackendInfo {
            name: slot.entry.name.to_string(),
            description: slot.entry.description.to_string(),
            priority: slot.entry.priority,
            available: slot.instance().map(|_| ()),
        })
        .collect();
    v.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    v
}

/// The shared instance of backend `name`, created on first use.
pub fn get(name: &str) -> Result<Backend> {
    let slot = slot(name)?;
    slot.instance().map_err(|reason| Error::BackendUnavailable { backend: name.to_string(), reason })
}

/// Devices backend `name` can run on (1 for host backends; 0 for a GPU backend when no GPU is
/// visible).
pub fn device_count(name: &str) -> Result<usize> {
    let slot = slot(name)?;
    Ok(slot.device_count())
}

/// The shared instance of backend `name` on device `ordinal`, created on first use (ordinal 0
/// is [`get`]'s instance). Shared instances of GPU backends on one device share that device's
/// default stream (never the legacy NULL stream); an engine running tensor parallelism takes
/// one instance per device and drives each from its own thread. An ordinal past the devices
/// the backend sees is [`Error::NoSuchDevice`].
pub fn get_on(name: &str, ordinal: usize) -> Result<Backend> {
    let slot = slot(name)?;
    if ordinal == 0 || slot.duplicate {
        return get(name); // also says why, when the backend is unavailable altogether
    }
    let count = slot.device_count();
    if ordinal >= count {
        return Err(Error::NoSuchDevice { backend: slot.entry.name.into(), ordinal, count });
    }
    type Cells = Mutex<BTreeMap<(&'static str, usize), Arc<OnceLock<std::result::Result<Backend, String>>>>>;
    static ON_DEVICE: LazyLock<Cells> = LazyLock::new(|| Mutex::new(BTreeMap::new()));
    let cell = ON_DEVICE.lock().unwrap_or_else(|e| e.into_inner()).entry((slot.entry.name, ordinal)).or_default().clone();
    let made = match slot.on_device() {
        Some(d) => {
            let f = d.create_on;
            once(slot.entry.name, &cell, move || f(ordinal, false))
        }
        None => once(slot.entry.name, &cell, slot.entry.create),
    };
    made.map_err(|reason| Error::BackendUnavailable { backend: name.to_string(), reason })
}

/// A new instance of backend `name` on device `ordinal`, not shared: its own stream (GPU
/// backends) and its own caches. Two instances on one GPU driven from two threads at once
/// compute what one would. Tensors and caches stay with the instance that made them (another
/// instance refuses them with [`Error::WrongInstance`]: their work is ordered on its stream).
pub fn create_on(name: &str, ordinal: usize) -> Result<Backend> {
    let slot = slot(name)?;
    slot.create_on(ordinal)
}

/// The outcome of [`select`]: the backend, why it was chosen, and why each other one was not.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The chosen backend.
    pub backend: Backend,
    /// Why it was chosen.
    pub reason: String,
    /// `(name, why not)` for every other registered backend.
    pub rejected: Vec<(String, String)>,
}

/// Picks the backend for `problem`: the one named by `ATTNFORGE_BACKEND` if set (an error with
/// its reasons if it cannot run the problem: never a silent fallback), else the available
/// backend of highest priority that supports every op of the problem.
pub fn select(problem: &ProblemDesc) -> Result<Selection> {
    let forced = std::env::var(BACKEND_ENV).ok().filter(|s| !s.trim().is_empty());
    select_with(problem, forced.as_deref())
}

/// [`select`] with the override given explicitly (`Some(name)`, e.g. from a CLI flag) instead of
/// read from the environment.
pub fn select_with(problem: &ProblemDesc, forced: Option<&str>) -> Result<Selection> {
    select_impl(problem, forced, 0)
}

/// [`select_with`] among the backends' shared instances on device `ordinal` ([`get_on`]): an
/// engine picking the backend for each of its GPUs. Backends without that device are rejected
/// with the reason.
pub fn select_on(problem: &ProblemDesc, forced: Option<&str>, ordinal: usize) -> Result<Selection> {
    select_impl(problem, forced, ordinal)
}

fn select_impl(problem: &ProblemDesc, forced: Option<&str>, ordinal: usize) -> Result<Selection> {
    let _span = tracing::debug_span!("select", forced, ordinal).entered();
    problem.validate()?;
    let instance = |slot: &Slot| -> std::result::Result<Backend, String> {
        if ordinal == 0 {
            slot.instance()
        } else {
            get_on(slot.entry.name, ordinal).map_err(|e| e.to_string())
        }
    };
    let mut verdicts: Vec<(&Slot, std::result::Result<Backend, String>)> = REGISTRY
        .values()
        .map(|slot| {
            let v = instance(slot).and_then(|b| match b.supports_problem(problem) {
                Ok(()) => Ok(b),
                Err(Error::Unsupported { reasons, .. }) => Err(format!("does not support the problem: {}", reasons.join("; "))),
                Err(e) => Err(e.to_string()),
            });
            (slot, v)
        })
        .collect();
    verdicts.sort_by(|a, b| b.0.entry.priority.cmp(&a.0.entry.priority).then(a.0.entry.name.cmp(b.0.entry.name)));

    let chosen = match forced {
        Some(name) => {
            let name = name.trim();
            // The forced backend's own errors: unknown name (listing the known ones), unavailable
            // (with why), or unsupported (every unmet requirement). Never another backend.
            let b = get_on(name, ordinal)?;
            b.supports_problem(problem)?;
            let i = verdicts.iter().position(|(s, _)| s.entry.name == name).unwrap_or(0);
            (i, format!("forced by {BACKEND_ENV} or the caller"))
        }
        None => match verdicts.iter().position(|(_, v)| v.is_ok()) {
            Some(i) => {
                let e = verdicts[i].0.entry;
                (i, format!("highest-priority available backend that supports the problem (priority {})", e.priority))
            }
            None => {
                let reasons = verdicts.iter().map(|(s, v)| format!("{}: {}", s.entry.name, v.as_ref().err().cloned().unwrap_or_default())).collect();
                tracing::warn!(reasons = ?reasons, "no registered backend can run the problem");
                return Err(Error::Unsupported { backend: "every registered backend".into(), op: "this problem".into(), reasons });
            }
        },
    };
    let (i, reason) = chosen;
    let backend = verdicts[i].1.clone().map_err(|r| Error::BackendUnavailable { backend: verdicts[i].0.entry.name.into(), reason: r })?;
    let rejected = verdicts
        .drain(..)
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, (slot, v))| {
            let why = match v {
                Err(r) => r,
                Ok(_) if j < i => "available, but not chosen: the choice was forced".to_string(),
                Ok(_) => format!("supports the problem but has lower priority ({})", slot.entry.priority),
            };
            (slot.entry.name.to_string(), why)
        })
        .collect::<Vec<(String, String)>>();
    tracing::info!(backend = backend.name(), reason = reason.as_str(), "selected");
    for (name, why) in &rejected {
        tracing::debug!(backend = name.as_str(), why = why.as_str(), "passed over");
    }
    Ok(Selection { backend, reason, rejected })
}
