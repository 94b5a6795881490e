//! Volume administration: `volume create|ls|info|start|stop|rm|status`. Specs are
//! compare-and-set writes in the catalog, so two operators cannot silently overwrite each
//! other; a volume must be stopped before it is removed (as in GlusterFS).

use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_net::{ErrorKind, RpcError};

use crate::admin::{
    BrickReport, BrickRequest, BrickStatus, METHOD_BRICK_USAGE, VolumeCreateRequest, VolumeStatus,
};
use crate::keys;
use crate::node::{Storage, blocking};
use crate::volume::{DEFAULT_BLOCK_SIZE, VolumeSpec, VolumeState};

/// Most volumes listed.
const MAX_VOLUMES: u32 = 1_000;

impl Storage {
    pub async fn create_volume(
        &self,
        request: VolumeCreateRequest,
    ) -> Result<VolumeSpec, RpcError> {
        let spec = VolumeSpec {
            name: request.name.clone(),
            id: crate::file::new_version() as u64,
            layout: request.layout,
            bricks: request.bricks,
            state: VolumeState::Started,
            block_size: request.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
            created_unix: (crate::file::now_ns() / 1_000_000_000).max(0) as u64,
            moving_from: None,
            is_previous_layout: false,
        };
        spec.validate().map_err(RpcError::bad_request)?;
        if let Some(stripe) = request.stripe
            && stripe as usize != spec.sets()
        {
            return Err(RpcError::bad_request(format!(
                "--stripe {stripe} with {} needs {} bricks, not {}",
                spec.layout.describe(),
                stripe as usize * spec.layout.set_width(),
                spec.bricks.len()
            )));
        }
        let reach = self.reach().await;
        for brick in &spec.bricks {
            if !reach.contains_key(&brick.node) {
                return Err(RpcError::bad_request(format!(
                    "node {} is not a member of this cluster (see bramble nodes)",
                    brick.node
                )));
            }
        }
        let command = Command::PutIfVersion {
            key: keys::volume_key(&spec.name),
            value: encode(&spec)?,
            expected_version: 0,
        };
        match self.commit(command).await? {
            CommandResult::Written { .. } => Ok(spec),
            _ => Err(RpcError::new(
                ErrorKind::AlreadyExists,
                format!("a volume named {} exists", spec.name),
            )),
        }
    }

    pub async fn list_volumes(&self) -> Result<Vec<VolumeSpec>, RpcError> {
        let found = self
            .meta
            .list(
                keys::VOLUMES_PREFIX,
                MAX_VOLUMES,
                Consistency::Linearizable,
                false,
            )
            .await?;
        found
            .into_iter()
            .map(|(key, value)| {
                postcard::from_bytes(&value.value).map_err(|error| {
                    RpcError::internal(format!("{key} holds an unreadable spec: {error}"))
                })
            })
            .collect()
    }

    pub async fn volume_info(&self, name: &str) -> Result<VolumeSpec, RpcError> {
        Ok(self.volume(name, Consistency::Linearizable).await?.0)
    }

    pub async fn set_volume_state(
        &self,
        name: &str,
        state: VolumeState,
    ) -> Result<VolumeSpec, RpcError> {
        let (mut spec, version) = self.volume(name, Consistency::Linearizable).await?;
        if spec.state == state {
            return Ok(spec);
        }
        spec.state = state;
        let command = Command::PutIfVersion {
            key: keys::volume_key(name),
            value: encode(&spec)?,
            expected_version: version,
        };
        match self.commit(command).await? {
            CommandResult::Written { .. } => Ok(spec),
            _ => Err(RpcError::new(
                ErrorKind::Unavailable,
                format!("volume {name} changed meanwhile; try again"),
            )),
        }
    }

    /// Replaces a brick (a disk lost for good, a node retired): the spec changes in one
    /// compare-and-set, then the caller starts a full heal pass that fills the new brick
    /// from the rest of each set. Until it is done, reads use the other copies.
    pub async fn replace_brick(
        &self,
        request: &crate::admin::ReplaceBrickRequest,
    ) -> Result<VolumeSpec, RpcError> {
        let (mut spec, version) = self
            .volume(&request.name, Consistency::Linearizable)
            .await?;
        let Some(index) = spec.bricks.iter().position(|brick| *brick == request.old) else {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!(
                    "volume {} has no brick {} (see bramble volume info {})",
                    spec.name,
                    request.old.describe(&spec.name),
                    spec.name
                ),
            ));
        };
        let reach = self.reach().await;
        if !reach.contains_key(&request.new.node) {
            return Err(RpcError::bad_request(format!(
                "node {} is not a member of this cluster",
                request.new.node
            )));
        }
        spec.bricks[index] = request.new.clone();
        spec.validate().map_err(RpcError::bad_request)?;
        let command = Command::PutIfVersion {
            key: keys::volume_key(&spec.name),
            value: encode(&spec)?,
            expected_version: version,
        };
        match self.commit(command).await? {
            CommandResult::Written { .. } => Ok(spec),
            _ => Err(RpcError::new(
                ErrorKind::Unavailable,
                format!("volume {} changed meanwhile; try again", spec.name),
            )),
        }
    }

    /// Adds and removes bricks (`add-brick`: new sets; `remove-brick`: whole sets). The
    /// spec changes at once, remembering the old brick list; files written from then on
    /// go to the new layout, reads of older ones look in both, and the caller starts the
    /// pass that moves the data and then forgets the old layout.
    pub async fn change_bricks(
        &self,
        name: &str,
        add: &[crate::volume::Brick],
        remove: &[crate::volume::Brick],
    ) -> Result<VolumeSpec, RpcError> {
        let (spec, version) = self.volume(name, Consistency::Linearizable).await?;
        if spec.moving_from.is_some() {
            return Err(RpcError::new(
                ErrorKind::Refused,
                format!(
                    "volume {name} is still moving data from its last brick change; `bramble volume heal {name}` resumes it"
                ),
            ));
        }
        for brick in remove {
            if !spec.bricks.contains(brick) {
                return Err(RpcError::new(
                    ErrorKind::NotFound,
                    format!("volume {name} has no brick {}", brick.describe(name)),
                ));
            }
        }
        for set in 0..spec.sets() {
            let members = spec.set_bricks(set);
            let removed = members
                .iter()
                .filter(|brick| remove.contains(brick))
                .count();
            if removed != 0 && removed != members.len() {
                return Err(RpcError::bad_request(format!(
                    "remove-brick takes whole sets: set {} is {}",
                    set + 1,
                    members
                        .iter()
                        .map(|brick| brick.describe(name))
                        .collect::<Vec<_>>()
                        .join(" ")
                )));
            }
        }
        let reach = self.reach().await;
        for brick in add {
            if !reach.contains_key(&brick.node) {
                return Err(RpcError::bad_request(format!(
                    "node {} is not a member of this cluster",
                    brick.node
                )));
            }
        }
        let mut changed = spec.clone();
        changed.bricks.retain(|brick| !remove.contains(brick));
        changed.bricks.extend(add.iter().cloned());
        changed.moving_from = Some(spec.bricks.clone());
        changed.validate().map_err(RpcError::bad_request)?;
        let command = Command::PutIfVersion {
            key: keys::volume_key(name),
            value: encode(&changed)?,
            expected_version: version,
        };
        match self.commit(command).await? {
            CommandResult::Written { .. } => Ok(changed),
            _ => Err(RpcError::new(
                ErrorKind::Unavailable,
                format!("volume {name} changed meanwhile; try again"),
            )),
        }
    }

    /// Forgets the layout data moved from, if the spec is still the one moved to.
    pub async fn finish_move(&self, moved: &VolumeSpec) -> Result<(), RpcError> {
        let (mut spec, version) = self.volume(&moved.name, Consistency::Linearizable).await?;
        if spec.bricks != moved.bricks || spec.moving_from != moved.moving_from {
            return Ok(());
        }
        spec.moving_from = None;
        let command = Command::PutIfVersion {
            key: keys::volume_key(&spec.name),
            value: encode(&spec)?,
            expected_version: version,
        };
        self.commit(command).await.map(|_| ())
    }

    /// Removes a stopped volume: its spec and its files from the catalog, then its bricks'
    /// blocks from every node that answers. Returns the bricks that could not be cleaned.
    pub async fn remove_volume(&self, name: &str) -> Result<Vec<String>, RpcError> {
        let (spec, version) = self.volume(name, Consistency::Linearizable).await?;
        if spec.state != VolumeState::Stopped {
            return Err(RpcError::new(
                ErrorKind::Refused,
                format!("volume {name} is started; stop it first (bramble volume stop {name})"),
            ));
        }
        let command = Command::Batch {
            conditions: vec![Condition {
                key: keys::volume_key(name),
                version,
            }],
            operations: vec![
                Operation::Delete {
                    key: keys::volume_key(name),
                },
                Operation::DeletePrefix {
                    prefix: keys::files_prefix(name),
                },
            ],
        };
        match self.commit(command).await? {
            CommandResult::BatchApplied { .. } => {}
            _ => {
                return Err(RpcError::new(
                    ErrorKind::Unavailable,
                    format!("volume {name} changed meanwhile; try again"),
                ));
            }
        }
        let reach = self.reach().await;
        let mut unclean = Vec::new();
        for (index, brick) in spec.bricks.iter().enumerate() {
            let request = BrickRequest {
                volume: spec.name.clone(),
                volume_id: spec.id,
                brick: index,
                previous_layout: spec.is_previous_layout,
            };
            let outcome = if brick.node == self.node {
                self.clear_brick(&spec, index).await
            } else {
                match reach.get(&brick.node) {
                    Some(found) => {
                        self.call_node::<_, ()>(
                            found.address,
                            crate::admin::METHOD_BRICK_CLEAR,
                            &(request, spec.clone()),
                        )
                        .await
                    }
                    None => Err(RpcError::new(ErrorKind::Unavailable, "not a member")),
                }
            };
            if let Err(error) = outcome {
                unclean.push(format!("{}: {error}", brick.describe(&spec.name)));
            }
        }
        Ok(unclean)
    }

    /// Deletes a removed volume's blocks and marker from a brick on this node.
    pub async fn clear_brick(&self, spec: &VolumeSpec, index: usize) -> Result<(), RpcError> {
        if spec.bricks.get(index).map(|brick| &brick.node) != Some(&self.node) {
            return Err(RpcError::bad_request("that brick is not on this node"));
        }
        // Only a volume that no longer exists (or exists under another id) is cleared.
        if let Ok((current, _)) = self.volume(&spec.name, Consistency::Linearizable).await
            && current.id == spec.id
        {
            return Err(RpcError::new(
                ErrorKind::Refused,
                format!("volume {} still exists", spec.name),
            ));
        }
        self.forget_volume(spec.id);
        let directory = self.brick_directory(spec, index);
        let (volume, id) = (spec.name.clone(), spec.id);
        blocking(move || crate::brick::BrickStore::clear(&directory, &volume, id)).await
    }

    /// `volume status`: the spec and every brick's state, asked of its node.
    pub async fn volume_status(&self, name: &str) -> Result<VolumeStatus, RpcError> {
        let (spec, _) = self.volume(name, Consistency::Linearizable).await?;
        let reach = self.reach().await;
        let mut bricks = Vec::new();
        for (index, brick) in spec.bricks.iter().enumerate() {
            let node_state = reach
                .get(&brick.node)
                .map(|found| found.state.as_str().to_string())
                .unwrap_or_else(|| "unknown".to_string());
            let request = BrickRequest {
                volume: spec.name.clone(),
                volume_id: spec.id,
                brick: index,
                previous_layout: spec.is_previous_layout,
            };
            let report = if brick.node == self.node {
                self.brick_usage(&request).await
            } else {
                match reach.get(&brick.node) {
                    Some(found) if !self.is_away(&brick.node, &reach) => {
                        self.call_node::<_, BrickReport>(
                            found.address,
                            METHOD_BRICK_USAGE,
                            &request,
                        )
                        .await
                    }
                    _ => Err(RpcError::new(ErrorKind::Unavailable, "the node is away")),
                }
            };
            let (path, usage, events, error) = match report {
                Ok(report) => (report.path, Some(report.usage), Some(report.events), None),
                Err(error) => (
                    brick
                        .path
                        .clone()
                        .unwrap_or_else(|| format!("<data-dir>/bricks/{}", spec.name)),
                    None,
                    None,
                    Some(error.message),
                ),
            };
            bricks.push(BrickStatus {
                index,
                set: index / spec.layout.set_width(),
                node: brick.node.clone(),
                path,
                node_state,
                usage,
                events,
                error,
            });
        }
        Ok(VolumeStatus { spec, bricks })
    }

    /// What a brick on this node holds.
    pub async fn brick_usage(&self, request: &BrickRequest) -> Result<BrickReport, RpcError> {
        let spec = self.spec_for_brick(request).await?;
        let store = self.local_brick(&spec, request.brick)?;
        let path = store.root().display().to_string();
        let usage = blocking(move || store.usage()).await?;
        Ok(BrickReport {
            path,
            usage,
            events: self.counters.events(),
        })
    }
}

fn encode(spec: &VolumeSpec) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(spec).map_err(|error| RpcError::internal(error.to_string()))
}
