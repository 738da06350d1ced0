//! A gateway on the in-memory store, built from a YAML config, so a benchmark runs the real
//! [`decide`](crate::decide::decide) on it: the decision the proxy makes, without the network.

use crate::config::Config;
use crate::gateway::Gateway;
use crate::key::ApiKey;
use crate::settings::Settings;
use crate::store::memory::MemoryStore;
use crate::store::KeyRecord;
use std::path::Path;
use std::sync::Arc;

pub struct DecisionFixture {
    pub gateway: Arc<Gateway>,
    /// The store the gateway's settings read, in place of the one the YAML names.
    pub store: Arc<MemoryStore>,
}

impl DecisionFixture {
    /// A gateway on `yaml` (a full config, checked as `keygate -t` would; its `store` is
    /// replaced by an empty in-memory one). Panics on an invalid config: a fixture's mistake.
    pub fn from_yaml(yaml: &str) -> DecisionFixture {
        let config = Config::parse(yaml, Path::new(".")).unwrap_or_else(|e| panic!("a valid config: {e:?}"));
        let store = Arc::new(MemoryStore::default());
        let settings = Settings::over_store(config, Arc::clone(&store) as _);
        let gateway = Gateway::for_tests(settings).expect("the background runtime starts");
        DecisionFixture { gateway, store }
    }

    /// Adds `key`'s record to the store.
    pub fn insert(&self, key: &str, record: KeyRecord) {
        self.store.insert(ApiKey::from_cli(key).id(), record);
    }

    /// The settings snapshot a request would load.
    pub fn settings(&self) -> Arc<Settings> {
        self.gateway.settings.load_full()
    }
}
