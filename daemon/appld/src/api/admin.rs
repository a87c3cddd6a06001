//! The operator's side of `appl.v1.Admin`: the model actions (load, unload, reload) through
//! the [`ModelManager`](crate::lifecycle::ModelManager), and the parts of `Status` that say
//! how the hardware and the models are. The one place where an [`AdminError`] becomes a gRPC
//! status. Who may call these is decided by the identity layer's role table (operators only);
//! here every action is recorded with its caller.

use std::sync::atomic::Ordering;

use appl_firmware_profiles::health::{self as hw, GpuHealth};
use appl_firmware_profiles::inventory::GpuVendor;
use appl_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::identity::Caller;
use crate::lifecycle::{AdminError, Outcome};
use crate::registry::Phase;

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

fn outcome_to_pb(o: &Outcome) -> pb::ModelOperation {
    pb::ModelOperation {
        model: o.model.clone(),
        sha256: o.sha256.map(|d| hex::encode(d.0)).unwrap_or_default(),
        outcome: o.outcome.to_owned(),
        message: o.message.clone(),
        seconds: o.took.as_secs_f64(),
    }
}

fn gpu_to_pb(g: &GpuHealth, faults: Vec<String>, models: Vec<String>) -> pb::GpuHealth {
    pb::GpuHealth {
        index: g.index,
        uuid: g.uuid.clone().unwrap_or_default(),
        name: g.name.clone(),
        vendor: match g.vendor {
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Amd => "amd",
        }
        .to_owned(),
        memory_used_bytes: g.memory_used_bytes,
        memory_total_bytes: g.memory_total_bytes,
        utilization_pct: g.utilization_pct,
        temperature_c: g.temperature_c,
        power_w: g.power_w,
        power_limit_w: g.power_limit_w,
        throttle: g.throttle.iter().map(|t| t.as_str().to_owned()).collect(),
        ecc_corrected: g.ecc_corrected,
        ecc_uncorrected: g.ecc_uncorrected,
        faults,
        warnings: hw::warnings(g),
        models,
    }
}

impl Api {
    /// The caller of a model action; refused while the daemon drains.
    fn admin_caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.state.check_admitting()?;
        Ok(Caller::of(req)?)
    }

    pub(super) async fn load_model_rpc(
        &self,
        req: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::ModelOperation>, Status> {
        let caller = self.admin_caller(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(AdminError::Invalid("id is empty; name the model to load".into()).into());
        }
        let out = self.manager.load(caller, self.state.admin_id(), id).await?;
        Ok(Response::new(outcome_to_pb(&out)))
    }

    pub(super) async fn unload_model_rpc(
        &self,
        req: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::ModelOperation>, Status> {
        let caller = self.admin_caller(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(AdminError::Invalid("id is empty; name the model to unload".into()).into());
        }
        let out = self
            .manager
            .unload(caller, self.state.admin_id(), id)
            .await?;
        Ok(Response::new(outcome_to_pb(&out)))
    }

    pub(super) async fn reload_models_rpc(
        &self,
        req: Request<pb::ReloadModelsRequest>,
    ) -> Result<Response<pb::ReloadModelsResponse>, Status> {
        let caller = self.admin_caller(&req)?;
        let id = req.into_inner().id;
        let id = (!id.is_empty()).then_some(id);
        let out = self
            .manager
            .reload(caller, self.state.admin_id(), id)
            .await?;
        Ok(Response::new(pb::ReloadModelsResponse {
            models: out.iter().map(outcome_to_pb).collect(),
        }))
    }

    /// Fills in the health, model and build parts of `Status`.
    pub(super) fn fill_status(&self, resp: &mut pb::StatusResponse) {
        let st = &self.state;
        let h = st.health.latest();
        let latched = st.health.latched_all();
        let models = st.models.snapshot();
        resp.gpus = h
            .gpus
            .iter()
            .map(|g| {
                let faults = latched
                    .get(&g.index)
                    .map(|l| l.faults.iter().map(ToString::to_string).collect())
                    .unwrap_or_default();
                let on: Vec<String> = models
                    .values()
                    .filter(|m| m.gpus().contains(&g.index))
                    .map(|m| m.id().to_owned())
                    .collect();
                gpu_to_pb(g, faults, on)
            })
            .collect();
        resp.host = Some(pb::HostHealth {
            memory_total_bytes: h.host.memory_total_bytes,
            memory_available_bytes: h.host.memory_available_bytes,
            process_rss_bytes: h.host.process_rss_bytes.unwrap_or(0),
        });
        resp.health_sampled_at = h
            .taken
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        resp.health_errors = h.errors.clone();
        let activity = st.models.activity();
        let mut states: Vec<pb::ModelState> = models
            .values()
            .map(|m| {
                let (state, fault) = match m.fault() {
                    Some(f) => (
                        "faulted",
                        format!("GPU{} ({}) reported {}", f.gpu, f.gpu_name, f.fault),
                    ),
                    None => ("serving", String::new()),
                };
                pb::ModelState {
                    id: m.id().to_owned(),
                    state: state.to_owned(),
                    sha256: hex::encode(m.sha256.0),
                    gpus: m.gpus(),
                    fault,
                    in_flight: m.in_flight(),
                    ..Default::default()
                }
            })
            .collect();
        for (id, a) in &activity {
            let s = match states.iter_mut().find(|s| &s.id == id) {
                Some(s) => s,
                None => {
                    states.push(pb::ModelState {
                        id: id.clone(),
                        ..Default::default()
                    });
                    // Cannot fire: an element was pushed on the line above.
                    states.last_mut().expect("just pushed")
                }
            };
            // A reload beside the running version leaves it serving meanwhile.
            if s.state.is_empty() || a.phase != Phase::Loading {
                s.state = a.op.as_str().to_owned();
            }
            s.phase = a.phase.as_str().to_owned();
            s.progress = a.progress.fraction();
            s.bytes_loaded = a.loaded_bytes();
            s.bytes_total = a.file_bytes;
            s.bytes_hashed = a.hashed.load(Ordering::Relaxed).min(a.file_bytes);
        }
        resp.models = states;
        resp.activity = st.models.status_line().unwrap_or_default();
        resp.build = Some(pb::BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            features: appl_engine::build_features()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            cpu_variant: crate::backends::chosen().unwrap_or_default().to_owned(),
        });
    }
}
