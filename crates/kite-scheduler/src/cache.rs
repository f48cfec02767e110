//! The scheduler's view of the cluster: per node, its allocatable resources and the pods
//! on it (bound, or assumed while their binding is in flight).

use k8s_openapi::api::core::v1::{Node, Pod};
use kite_runtime::quantity;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Requests, in milli-CPU, bytes and counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub ephemeral: i128,
    pub pods: i128,
    pub scalar: BTreeMap<String, i128>,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }
    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.ephemeral -= o.ephemeral;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }
    fn from_map(
        m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    ) -> Self {
        let mut r = Resources::default();
        for (k, q) in m {
            match k.as_str() {
                "cpu" => r.cpu = quantity::parse_milli(&q.0).unwrap_or(0),
                "memory" => r.memory = quantity::parse(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral = quantity::parse(&q.0).unwrap_or(0),
                "pods" => r.pods = quantity::parse(&q.0).unwrap_or(0),
                _ => {
                    r.scalar
                        .insert(k.clone(), quantity::parse(&q.0).unwrap_or(0));
                }
            }
        }
        r
    }
}

/// What the scheduler needs of one pod, computed once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub requests: Resources,
    /// Requests with upstream's scoring defaults (100m CPU, 200 MiB) for unset values.
    pub non_zero: Resources,
    pub host_ports: Vec<(String, String, i32)>,
    pub priority: i32,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>, priority: i32) -> Self {
        let default_spec = k8s_openapi::api::core::v1::PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&default_spec);
        let requests = |c: &k8s_openapi::api::core::v1::Container| {
            c.resources
                .as_ref()
                .and_then(|r| r.requests.clone())
                .unwrap_or_default()
        };
        let mut req = Resources::default();
        let mut nz = Resources::default();
        for c in &spec.containers {
            let r = requests(c);
            let cr = Resources::from_map(&r);
            let mut cnz = cr.clone();
            if !r.contains_key("cpu") {
                cnz.cpu = 100;
            }
            if !r.contains_key("memory") {
                cnz.memory = 200 * 1024 * 1024;
            }
            req.add(&cr);
            nz.add(&cnz);
        }
        // Init containers run one at a time: the pod needs the largest of them, if more.
        for c in spec.init_containers.iter().flatten() {
            let cr = Resources::from_map(&requests(c));
            req.cpu = req.cpu.max(cr.cpu);
            req.memory = req.memory.max(cr.memory);
        }
        if let Some(o) = &spec.overhead {
            req.add(&Resources::from_map(o));
        }
        req.pods = 1;
        nz.pods = 1;
        let mut host_ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push((
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                        hp,
                    ));
                }
            }
        }
        PodInfo {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            requests: req,
            non_zero: nz,
            host_ports,
            priority,
            pod,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn has_required_anti_affinity(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty())
    }
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: HashMap<String, Arc<PodInfo>>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> Self {
        let alloc = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone().or_else(|| s.capacity.clone()))
            .unwrap_or_default();
        NodeInfo {
            allocatable: Resources::from_map(&alloc),
            node,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: HashMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    /// The node as a pod of lower priority sees it: with the pods nominated to it (which
    /// wait for preempted pods to go) counted as if they ran there, as upstream's
    /// `addNominatedPods`.
    pub fn with_nominated(&self, nominated: &[Arc<PodInfo>]) -> NodeInfo {
        let mut n = self.clone();
        for p in nominated {
            n.add_pod(p.clone());
        }
        n
    }

    fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        if let Some(old) = self.pods.insert(p.uid.clone(), p) {
            self.requested.sub(&old.requests);
            self.non_zero_requested.sub(&old.non_zero);
        }
    }

    fn remove_pod(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            self.requested.sub(&old.requests);
            self.non_zero_requested.sub(&old.non_zero);
        }
    }
}

/// Nodes by name, and where each known pod sits.
#[derive(Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Pods whose node does not exist (yet), so they are counted when it appears.
    orphans: HashMap<String, Arc<PodInfo>>,
    pod_node: HashMap<String, String>,
    /// Pods with required anti-affinity terms, which every new pod must be checked
    /// against; kept apart so that pods without such terms cost nothing per attempt.
    pub anti_affinity: HashMap<String, Arc<PodInfo>>,
}

impl Cache {
    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        match self.nodes.get_mut(&name) {
            Some(ni) => {
                let fresh = NodeInfo::new(node);
                ni.node = fresh.node;
                ni.allocatable = fresh.allocatable;
            }
            None => {
                let mut ni = NodeInfo::new(node);
                let waiting: Vec<String> = self
                    .orphans
                    .iter()
                    .filter(|(_, p)| self.pod_node.get(&p.uid) == Some(&name))
                    .map(|(u, _)| u.clone())
                    .collect();
                for uid in waiting {
                    if let Some(p) = self.orphans.remove(&uid) {
                        ni.add_pod(p);
                    }
                }
                self.nodes.insert(name, ni);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(ni) = self.nodes.remove(name) {
            for (uid, p) in ni.pods {
                self.orphans.insert(uid, p);
            }
        }
    }

    /// Records `p` on `node` (bound or assumed).
    pub fn add_pod(&mut self, node: &str, p: Arc<PodInfo>) {
        self.remove_pod(&p.uid);
        self.pod_node.insert(p.uid.clone(), node.to_string());
        if p.has_required_anti_affinity() {
            self.anti_affinity.insert(p.uid.clone(), p.clone());
        }
        match self.nodes.get_mut(node) {
            Some(ni) => ni.add_pod(p),
            None => {
                self.orphans.insert(p.uid.clone(), p);
            }
        }
    }

    pub fn remove_pod(&mut self, uid: &str) {
        self.anti_affinity.remove(uid);
        if let Some(node) = self.pod_node.remove(uid) {
            if let Some(ni) = self.nodes.get_mut(&node) {
                ni.remove_pod(uid);
            }
        }
        self.orphans.remove(uid);
    }

    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.pod_node.get(uid).map(String::as_str)
    }
}
