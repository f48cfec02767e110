//! Byte layouts of the records the sled backend keeps: key records and history (log) records.
//!
//! Key record:  `create_rev:i64be | mod_rev:i64be | value`
//! Log record:  `kind:u8 | key_len:u32be | key | create_rev:i64be | has_prev:u8 |
//!               [prev_create:i64be | prev_mod:i64be | prev_len:u32be | prev] | value`

use crate::{Event, EventKind, KeyValue, Revision, StoreError};

pub fn encode_kv(create: Revision, modr: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_be_bytes());
    out.extend_from_slice(&modr.to_be_bytes());
    out.extend_from_slice(value);
    out
}

pub fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(StoreError::Corrupt(format!("short key record for {key:?}")));
    }
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: i64::from_be_bytes(raw[0..8].try_into().unwrap()),
        mod_revision: i64::from_be_bytes(raw[8..16].try_into().unwrap()),
        value: raw[16..].to_vec(),
    })
}

pub fn encode_event(ev: &Event) -> Vec<u8> {
    let key = ev.kv.key.as_bytes();
    let mut out = Vec::with_capacity(32 + key.len() + ev.kv.value.len());
    out.push(match ev.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&ev.kv.create_revision.to_be_bytes());
    match &ev.prev {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.create_revision.to_be_bytes());
            out.extend_from_slice(&p.mod_revision.to_be_bytes());
            out.extend_from_slice(&(p.value.len() as u32).to_be_bytes());
            out.extend_from_slice(&p.value);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&ev.kv.value);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.pos + n > self.buf.len() {
            return Err(StoreError::Corrupt("short log record".into()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
}

pub fn decode_event(revision: Revision, raw: &[u8]) -> Result<Event, StoreError> {
    let mut r = Reader { buf: raw, pos: 0 };
    let kind = match r.take(1)?[0] {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        k => return Err(StoreError::Corrupt(format!("event kind {k}"))),
    };
    let klen = r.u32()? as usize;
    let key = String::from_utf8(r.take(klen)?.to_vec())
        .map_err(|_| StoreError::Corrupt("non-utf8 key".into()))?;
    let create_revision = r.i64()?;
    let prev = if r.take(1)?[0] == 1 {
        let pc = r.i64()?;
        let pm = r.i64()?;
        let plen = r.u32()? as usize;
        Some(KeyValue {
            key: key.clone(),
            create_revision: pc,
            mod_revision: pm,
            value: r.take(plen)?.to_vec(),
        })
    } else {
        None
    };
    let value = raw[r.pos..].to_vec();
    Ok(Event {
        kind,
        revision,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
        },
        prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips() {
        let ev = Event {
            kind: EventKind::Delete,
            revision: 9,
            kv: KeyValue {
                key: "/a/b".into(),
                value: b"old".to_vec(),
                create_revision: 3,
                mod_revision: 9,
            },
            prev: Some(KeyValue {
                key: "/a/b".into(),
                value: b"old".to_vec(),
                create_revision: 3,
                mod_revision: 5,
            }),
        };
        assert_eq!(decode_event(9, &encode_event(&ev)).unwrap(), ev);
        assert!(decode_event(1, &[0, 0, 0, 0, 9]).is_err());
    }
}
