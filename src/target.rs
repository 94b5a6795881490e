//! Which cluster a CLI command is about. In order of precedence: `--credential FILE`,
//! `--dir` (an emulated cluster), `--data-dir` (a node's directory), then `./.bramble`
//! and `/var/lib/bramble` if present. Kept apart from [`crate::client`] so that the
//! client knows nothing of the emulator, which uses it (arrows: target -> emulator ->
//! client).

use anyhow::{Context, Result, bail};
use bramble_cluster::AdminCredential;
use bramble_cluster::node_dir::Layout;
use std::collections::BTreeMap;

use crate::cli::GlobalOptions;
use crate::client::{ClusterClient, data_dir};
use crate::emulator::Emulation;

/// A client for the cluster the global options point at.
pub fn resolve(global: &GlobalOptions) -> Result<ClusterClient> {
    if let Some(path) = &global.credential {
        let admin = AdminCredential::load(path)
            .with_context(|| format!("reading the credential {}", path.display()))?;
        return ClusterClient::from_admin(
            global,
            admin,
            &format!("credential {}", path.display()),
            BTreeMap::new(),
        );
    }
    if global.dir.is_some() || global.data_dir.is_none() {
        if let Some(emulation) = Emulation::find(global)? {
            return emulation.client(global);
        }
        if let Some(dir) = &global.dir {
            bail!(
                "no emulated cluster in {} (no cluster.toml); start one with `bramble up --dir {}`",
                dir.display(),
                dir.display()
            );
        }
    }
    let data_dir = data_dir(global);
    if Layout::new(&data_dir).is_initialised() {
        return ClusterClient::from_data_dir(global, &data_dir);
    }
    bail!(
        "no cluster found: no emulated cluster in ./.bramble and no node in {}.\nStart an emulated cluster with `bramble up`, or point at one with --dir, --data-dir or --credential",
        data_dir.display()
    )
}
