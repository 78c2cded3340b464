//! RoPE frequency tables on the device, cached by their bits and bounded: dynamic NTK (and
//! LongRoPE past its original length) makes a new table as the context grows, one per decode
//! step past `original_max_position`; an unbounded cache would grow for ever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use attnforge_api::{Result, RopeFrequencies};

use crate::runtime::{DeviceBuffer, Gpu};

/// Tables kept at most; the least recently used goes first. A table still used by queued work
/// stays alive through its `Arc` (and its memory is freed in stream order after that work).
pub(crate) const MAX_TABLES: usize = 64;

#[derive(Default)]
struct Lru {
    tables: HashMap<Vec<u64>, (Arc<DeviceBuffer>, u64)>,
    clock: u64,
}

/// The device tables of one backend instance.
#[derive(Default)]
pub(crate) struct RopeTables {
    inner: Mutex<Lru>,
}

impl RopeTables {
    /// `freqs.inv_freq` on the device (f64), uploaded once per distinct table.
    pub fn get(&self, gpu: &Gpu, freqs: &RopeFrequencies) -> Result<Arc<DeviceBuffer>> {
        let key: Vec<u64> = freqs.inv_freq.iter().map(|f| f.to_bits()).collect();
        let mut lru = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lru.clock += 1;
        let now = lru.clock;
        if let Some((t, used)) = lru.tables.get_mut(&key) {
            *used = now;
            return Ok(t.clone());
        }
        let bytes: Vec<u8> = bytemuck::cast_slice(&freqs.inv_freq).to_vec();
        let t = Arc::new(gpu.upload(&bytes)?);
        if lru.tables.len() >= MAX_TABLES {
            if let Some(oldest) = lru.tables.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| k.clone()) {
                lru.tables.remove(&oldest);
            }
        }
        lru.tables.insert(key, (t.clone(), now));
        Ok(t)
    }

    /// Tables held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::{h100_props, FakeDriver};

    #[test]
    fn the_table_cache_is_bounded_and_keeps_recent_tables() {
        let gpu = Gpu::with_driver(Box::new(FakeDriver::new(0, h100_props())), &crate::runtime::fake::fake_images()).unwrap();
        let tables = RopeTables::default();
        // A dynamic-NTK decode past its original length: a new table every step.
        let cfg = attnforge_api::RopeConfig {
            scaling: attnforge_api::RopeScaling::DynamicNtk { factor: 4.0, original_max_position: 16 },
            ..attnforge_api::RopeConfig::new(64, 10000.0, 1 << 20)
        };
        let first = tables.get(&gpu, &cfg.frequencies(0).unwrap()).unwrap();
        for step in 16..2000 {
            tables.get(&gpu, &cfg.frequencies(step).unwrap()).unwrap();
            // The first table stays in use every step (a prefix rotated with it).
            assert!(Arc::ptr_eq(&first, &tables.get(&gpu, &cfg.frequencies(0).unwrap()).unwrap()));
            assert!(tables.len() <= MAX_TABLES);
        }
        assert_eq!(tables.len(), MAX_TABLES);
    }
}
