//! Who holds the trigger socket's connections: a total cap, a share of it that only peers
//! allowed to apply get, and a cap per uid for the others, so that no local user can keep
//! root's `trigger` out by holding connections.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Connections served at once; more get an immediate refusal.
pub(crate) const MAX_CONNECTIONS: usize = 512;
/// Of those, how many only peers that may apply get.
pub(crate) const RESERVED_FOR_APPLIERS: usize = 64;
/// Connections one uid that may not apply may hold at once.
pub(crate) const MAX_PER_UID: usize = 8;

#[derive(Default)]
struct Counts {
    total: usize,
    outsiders: usize,
    per_uid: HashMap<u32, usize>,
}

/// The counts, shared by the connection tasks of the daemon's one thread.
#[derive(Clone, Default)]
pub(crate) struct Slots(Rc<RefCell<Counts>>);

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// All [`MAX_CONNECTIONS`] are taken.
    Total,
    /// All the slots peers that may not apply may have are taken.
    Outsiders,
    /// This uid holds [`MAX_PER_UID`] connections.
    Uid(u32),
}

impl Full {
    pub(crate) fn message(&self) -> String {
        match self {
            Full::Total | Full::Outsiders => {
                "too many connections to the trigger socket; try again".into()
            }
            Full::Uid(uid) => format!(
                "too many connections from uid {uid} (at most {MAX_PER_UID} for a user that may not apply); close one and try again"
            ),
        }
    }
}

impl Slots {
    /// Takes a slot for a connection not yet identified (counted in the total only).
    pub(crate) fn accept(&self) -> Result<Slot, Full> {
        let mut c = self.0.borrow_mut();
        if c.total >= MAX_CONNECTIONS {
            return Err(Full::Total);
        }
        c.total += 1;
        Ok(Slot {
            slots: self.clone(),
            outsider: None,
        })
    }
}

/// One admitted connection's slot, given back when dropped.
pub(crate) struct Slot {
    slots: Slots,
    /// The uid of a peer that may not apply, once [`Slot::admit`] counted it.
    outsider: Option<u32>,
}

impl Slot {
    /// Admits the identified peer: one that may apply always (within the total); another only
    /// within the outsiders' share and its uid's cap.
    pub(crate) fn admit(&mut self, uid: u32, may_apply: bool) -> Result<(), Full> {
        if may_apply {
            return Ok(());
        }
        let mut c = self.slots.0.borrow_mut();
        if c.outsiders >= MAX_CONNECTIONS - RESERVED_FOR_APPLIERS {
            return Err(Full::Outsiders);
        }
        let held = c.per_uid.entry(uid).or_default();
        if *held >= MAX_PER_UID {
            return Err(Full::Uid(uid));
        }
        *held += 1;
        c.outsiders += 1;
        self.outsider = Some(uid);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.0.borrow_mut();
        c.total -= 1;
        if let Some(uid) = self.outsider {
            c.outsiders -= 1;
            if let Some(held) = c.per_uid.get_mut(&uid) {
                *held -= 1;
                if *held == 0 {
                    c.per_uid.remove(&uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outsiders_are_capped_per_uid_and_appliers_keep_their_share() {
        let slots = Slots::default();
        let mut held = Vec::new();
        for _ in 0..MAX_PER_UID {
            let mut s = slots.accept().unwrap();
            s.admit(65534, false).unwrap();
            held.push(s);
        }
        let mut s = slots.accept().unwrap();
        assert_eq!(s.admit(65534, false), Err(Full::Uid(65534)));
        drop(s);
        for uid in 1000.. {
            let mut s = slots.accept().unwrap();
            if s.admit(uid, false).is_err() {
                break;
            }
            held.push(s);
        }
        assert_eq!(held.len(), MAX_CONNECTIONS - RESERVED_FOR_APPLIERS);
        for _ in 0..RESERVED_FOR_APPLIERS {
            let mut s = slots.accept().unwrap();
            s.admit(0, true).unwrap();
            held.push(s);
        }
        assert!(matches!(slots.accept(), Err(Full::Total)));
        held.clear();
        assert_eq!(slots.0.borrow().total, 0);
        assert!(slots.0.borrow().per_uid.is_empty());
    }
}
