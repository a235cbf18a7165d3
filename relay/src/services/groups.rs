//! Account groups (admin).

use super::{check_name, Actor, Page, PageReq, ServiceError, Services};
use crate::groups::Group;
use schema::AdminVerb;

fn check_group_name(s: &str) -> Result<String, ServiceError> {
    check_name("name", s, 64)
}

fn check_remark(s: &str) -> Result<String, ServiceError> {
    if s.chars().count() > 512 {
        return Err(ServiceError::BadRequest(
            "remark must be at most 512 characters".into(),
        ));
    }
    Ok(s.trim().to_owned())
}

impl Services {
    /// Groups, one page. Users see them too (to pick one for a key).
    pub async fn list_groups(
        &self,
        _actor: &Actor,
        page: PageReq,
    ) -> Result<Page<Group>, ServiceError> {
        let (items, total) = self.groups.list(page.offset(), page.limit()).await?;
        Ok(Page::new(items, total, page))
    }

    /// One group.
    pub async fn get_group(&self, _actor: &Actor, id: i64) -> Result<Group, ServiceError> {
        self.groups
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound("group"))
    }

    /// Creates a group (admin).
    pub async fn create_group(
        &self,
        actor: &Actor,
        name: &str,
        remark: &str,
    ) -> Result<Group, ServiceError> {
        actor.require_admin()?;
        let name = check_group_name(name)?;
        let remark = check_remark(remark)?;
        if self.groups.by_name(&name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("group {name:?} exists")));
        }
        let g = self.groups.create(&name, &remark).await?;
        self.audit(
            actor,
            AdminVerb::GroupCreate,
            format!("group:{}", g.id),
            format!("created group {}", g.name),
        );
        Ok(g)
    }

    /// Finds or creates a group by name (the CLI's `--group NAME`).
    pub async fn ensure_group(&self, actor: &Actor, name: &str) -> Result<Group, ServiceError> {
        match self.groups.by_name(name.trim()).await? {
            Some(g) => Ok(g),
            None => self.create_group(actor, name, "").await,
        }
    }

    /// Renames a group or changes its remark (admin).
    pub async fn update_group(
        &self,
        actor: &Actor,
        id: i64,
        name: Option<&str>,
        remark: Option<&str>,
    ) -> Result<Group, ServiceError> {
        actor.require_admin()?;
        let before = self
            .groups
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound("group"))?;
        let name = name.map(check_group_name).transpose()?;
        let remark = remark.map(check_remark).transpose()?;
        if let Some(n) = &name {
            if let Some(other) = self.groups.by_name(n).await? {
                if other.id != id {
                    return Err(ServiceError::Conflict(format!("group {n:?} exists")));
                }
            }
        }
        let after = self
            .groups
            .update(id, name.as_deref(), remark.as_deref())
            .await?
            .ok_or(ServiceError::NotFound("group"))?;
        self.keys.clear_cache();
        self.audit(
            actor,
            AdminVerb::GroupUpdate,
            format!("group:{id}"),
            format!(
                "group {} → {}{}",
                before.name,
                after.name,
                if before.remark != after.remark {
                    ", remark changed"
                } else {
                    ""
                }
            ),
        );
        Ok(after)
    }

    /// Deletes a group that no account or key uses (admin).
    pub async fn delete_group(&self, actor: &Actor, id: i64) -> Result<(), ServiceError> {
        actor.require_admin()?;
        let g = self
            .groups
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound("group"))?;
        if g.accounts > 0 || g.keys > 0 {
            return Err(ServiceError::Conflict(format!(
                "group {} is in use by {} account(s) and {} key(s)",
                g.name, g.accounts, g.keys
            )));
        }
        self.groups.delete(id).await?;
        self.audit(
            actor,
            AdminVerb::GroupDelete,
            format!("group:{id}"),
            format!("deleted group {}", g.name),
        );
        Ok(())
    }
}
