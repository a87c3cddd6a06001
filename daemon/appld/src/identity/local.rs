//! Unix socket peers: which groups a peer's uid belongs to, from the system's user and group
//! databases. Looked up once per connection, off the async threads (NSS may ask a directory
//! server), never per request.

use std::ffi::CString;

use nix::unistd::{getgrouplist, Gid, Group, Uid, User};

/// The gids of `uid`: its primary group and every group that lists it, plus `gid` (the peer
/// process's own group). Unknown users have only `gid`.
pub fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    if let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) {
        out.push(user.gid.as_raw());
        if let Ok(name) = CString::new(user.name) {
            if let Ok(groups) = getgrouplist(&name, user.gid) {
                out.extend(groups.into_iter().map(Gid::as_raw));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The gid of a group name, if the group exists.
pub fn group_gid(name: &str) -> Option<u32> {
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_the_root_group() {
        assert!(groups_of(0, 0).contains(&0));
        assert_eq!(group_gid("root"), Some(0));
        assert_eq!(group_gid("no-such-group-appl-test"), None);
        // An unknown uid keeps only the process's own gid.
        assert_eq!(groups_of(4_000_000_123, 77), vec![77]);
    }
}
