//! Shares work between the items of one batch: identical `user:resource`
//! pairs are resolved once, whatever the consistency mode.

use std::{collections::HashMap, future::Future, sync::Arc};

use tokio::sync::OnceCell;

use crate::{
    engine::permissions::{PermissionSet, PermissionSource},
    error::AuthzError,
    model::PermissionKey,
};

type Resolved = (PermissionSet, PermissionSource);

#[derive(Default)]
pub struct BatchMemo {
    sets: std::sync::Mutex<HashMap<PermissionKey, Arc<OnceCell<Resolved>>>>,
}

impl BatchMemo {
    /// Runs `resolve` for the first item with this key; later items (also
    /// concurrent ones) reuse its answer.
    pub async fn get_or_resolve<F>(
        &self,
        key: PermissionKey,
        resolve: F,
    ) -> Result<Resolved, AuthzError>
    where
        F: Future<Output = Result<Resolved, AuthzError>>,
    {
        let cell = {
            let mut sets = self
                .sets
                .lock()
                .map_err(|_| AuthzError::Internal("batch memo lock poisoned".into()))?;
            sets.entry(key).or_default().clone()
        };
        cell.get_or_try_init(|| resolve).await.cloned()
    }
}
