//! How much to read at a time when relaying a body: hyper's adaptive rule (its
//! `ReadStrategy::Adaptive`), so that a large body arriving fast is moved in few large reads
//! and writes while a trickle keeps a small buffer. With a fixed 16 KiB, a 1 MiB response
//! took 64 reads and 64 writes, and the lane spent 1.8x hyper's CPU on it
//! (`RESPONSE_SIZE=1048576 CONNECTIONS=8 bench/native-h1.sh`, 2026-11-30).

/// The room for the next read of a body being relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Room(usize);

impl Room {
    /// The first read's room, and the least.
    pub(super) const MIN: usize = 16 * 1024;
    /// The most: what one in-flight response may hold.
    pub(super) const MAX: usize = 256 * 1024;

    pub(super) fn new() -> Self {
        Room(Self::MIN)
    }

    /// The room for a body of known length: all of it at once, within [`Room::MIN`] and
    /// [`Room::MAX`] (no ramp from the least for a large body).
    pub(super) fn for_length(left: u64) -> Self {
        let n = usize::try_from(left).unwrap_or(usize::MAX);
        Room(n.clamp(Self::MIN, Self::MAX))
    }

    pub(super) fn get(self) -> usize {
        self.0
    }

    /// Empties `buf` and makes room in it for the next read.
    pub(super) fn prepare(self, buf: &mut Vec<u8>) {
        buf.clear();
        if buf.capacity() < self.0 {
            buf.reserve(self.0);
        }
    }

    /// After a read of `n` bytes: doubled if the read filled the room, halved if it used under
    /// a quarter of it.
    pub(super) fn after(&mut self, n: usize) {
        if n >= self.0 {
            self.0 = (self.0 * 2).min(Self::MAX);
        } else if n < self.0 / 4 {
            self.0 = (self.0 / 2).max(Self::MIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_grows_with_full_reads_and_shrinks_with_small_ones() {
        let mut r = Room::new();
        for _ in 0..10 {
            r.after(r.get());
        }
        assert_eq!(r.get(), Room::MAX);
        r.after(Room::MAX / 2);
        assert_eq!(r.get(), Room::MAX, "a half-full read keeps the room");
        for _ in 0..10 {
            r.after(100);
        }
        assert_eq!(r.get(), Room::MIN);
        assert_eq!(Room::for_length(10).get(), Room::MIN);
        assert_eq!(Room::for_length(1 << 20).get(), Room::MAX);
        assert_eq!(Room::for_length(100_000).get(), 100_000);
        let mut buf = Vec::new();
        r.prepare(&mut buf);
        assert!(buf.is_empty() && buf.capacity() >= Room::MIN);
    }
}
