//! The backend registry. Backend crates register a [`BackendEntry`] at link time with
//! `inventory::submit!`; the registry freezes the entries into a sorted map on first use
//! (a name registered twice is refused, never "last one wins"), creates each backend lazily
//! and once, and picks one for a problem.
//!
//! ```
//! use backend_api::registry;
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

impl Slot {
    fn instance(&self) -> std::result::Result<Backend, String> {
        let name = self.entry.name;
        if self.duplicate {
            return Err(format!("the name `{name}` is registered by more than one backend; refusing both"));
        }
        if let Some(done) = self.instance.get() {
            return done.clone();
        }
        if BUILDING.with(|b| b.borrow().contains(&name)) {
            let chain = BUILDING.with(|b| b.borrow().join(" -> "));
            return Err(format!("`{name}` was asked for while it is being created ({chain} -> {name}): constructors must not depend on themselves"));
        }
        let outermost = BUILDING.with(|b| b.borrow().is_empty());
        // A constructor that panicked while holding the lock poisons it; the lock guards no data.
        let _guard = outermost.then(|| CONSTRUCTION.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(done) = self.instance.get() {
            return done.clone(); // another thread created it while this one waited
        }
        BUILDING.with(|b| b.borrow_mut().push(name));
        let made = {
            let _span = tracing::debug_span!("create_backend", name).entered();
            std::panic::catch_unwind(self.entry.create)
                .map_err(|p| format!("its constructor panicked: {}", panic_message(p.as_ref())))
                .and_then(|r| r.map(Backend::new))
        };
        BUILDING.with(|b| b.borrow_mut().pop());
        // Only this thread constructs (the lock), so nobody set it meanwhile.
        self.instance.get_or_init(|| made).clone()
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
    let slot = REGISTRY.get(name).ok_or_else(|| Error::UnknownBackend { name: name.to_string(), known: names() })?;
    slot.instance().map_err(|reason| Error::BackendUnavailable { backend: name.to_string(), reason })
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
    let _span = tracing::debug_span!("select", forced).entered();
    problem.validate()?;
    let mut verdicts: Vec<(&Slot, std::result::Result<Backend, String>)> = REGISTRY
        .values()
        .map(|slot| {
            let v = slot.instance().and_then(|b| match b.supports_problem(problem) {
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
            let b = get(name)?;
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
        .collect();
    Ok(Selection { backend, reason, rejected })
}
