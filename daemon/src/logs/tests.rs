//! The log store's tests: capture, the ring and its sidecar, followers and
//! their gaps, pages, and failing disks.

use std::io::Write;
use std::os::fd::OwnedFd;

use super::*;

fn pipe() -> (OwnedFd, File) {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    (r, File::from(w))
}

/// Pumps `chunks` through a pipe into stream `s` of job `id`, each chunk
/// one write, and waits until the pump is done.
async fn pump_all(live: &Arc<LiveLog>, s: Stream, chunks: &[&[u8]]) {
    let (r, mut w) = pipe();
    let pump = tokio::spawn(live.clone().pump(s, r));
    let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
    tokio::task::spawn_blocking(move || {
        for c in chunks {
            w.write_all(&c).unwrap();
        }
    })
    .await
    .unwrap();
    pump.await.unwrap();
}

fn numbered_lines(range: std::ops::Range<u32>) -> Vec<u8> {
    range
        .flat_map(|i| format!("line {i:06}\n").into_bytes())
        .collect()
}

/// Everything a follower got, with its gaps.
async fn drain(mut rx: mpsc::Receiver<Piece>) -> Vec<Piece> {
    let mut got = Vec::new();
    while let Some(p) = rx.recv().await {
        got.push(p);
    }
    got
}

/// A stream that closes without a byte ends in the runtime: the
/// follower is told it is done, and no file is created.
#[tokio::test]
async fn a_silent_stream_ends_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    let live = logs.start(3);
    let (r, w) = pipe();
    let pump = tokio::spawn(live.clone().pump(Stream::Stderr, r));
    let (tx, mut rx) = mpsc::channel(16);
    let l2 = live.clone();
    let follower = tokio::spawn(async move { l2.follow(Stream::Stderr, Some(0), tx).await });
    drop(w);
    pump.await.unwrap();
    assert_eq!(follower.await.unwrap().unwrap(), 0);
    assert!(rx.recv().await.is_none());
    assert!(!dir.path().join("3.err").exists());
    assert!(logs.read_stored(3, Stream::Stderr).unwrap().is_empty());
}

/// A second attempt's output is appended to the first's, and its
/// positions start where the first's ended, though the lengths are
/// only read once the second attempt writes or is followed.
#[tokio::test]
async fn a_later_attempt_appends_and_positions_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    for (attempt, text) in [(1, "first\n"), (2, "second\n")] {
        let live = logs.start(5);
        pump_all(&live, Stream::Stdout, &[text.as_bytes()]).await;
        let (tx, rx) = mpsc::channel(16);
        let followed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            live.follow(Stream::Stdout, None, tx),
        )
        .await
        .expect("the follower never saw the stream end: its length is off")
        .unwrap();
        let begins = if attempt == 1 { 0 } else { 6 };
        assert_eq!(followed, begins + text.len() as u64);
        let got = drain(rx).await;
        assert_eq!(
            got,
            vec![Piece {
                skipped: 0,
                offset: begins,
                data: text.as_bytes().to_vec()
            }]
        );
        logs.finish(5);
    }
    assert_eq!(
        logs.read_stored(5, Stream::Stdout).unwrap(),
        b"first\nsecond\n"
    );
}

/// Past the cap the file is a ring: it never grows past the cap, a
/// finished stream reads back as its newest `cap` bytes in order, and a
/// non-follow read from the start says how many bytes were dropped.
#[tokio::test]
async fn the_ring_keeps_the_newest_bytes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1000;
    let logs = LogStore::new(dir.path().to_path_buf(), cap).unwrap();
    let live = logs.start(7);
    let all = numbered_lines(0..500);
    // Odd-sized writes, so slots wrap in the middle of a write.
    let chunks: Vec<&[u8]> = all.chunks(333).collect();
    pump_all(&live, Stream::Stdout, &chunks).await;
    logs.finish(7);
    let stored = logs.read_stored(7, Stream::Stdout).unwrap();
    assert_eq!(stored, all[all.len() - cap as usize..]);
    assert_eq!(
        std::fs::metadata(dir.path().join("7.out")).unwrap().len(),
        cap
    );
    let page = logs.read_page(7, Stream::Stdout, None, PAGE_MAX).unwrap();
    let dropped = all.len() as u64 - cap;
    assert_eq!(page.end, all.len() as u64);
    // The kept bytes start mid-line; the page starts at the next line.
    let first_nl = stored.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(page.piece.skipped, dropped + first_nl as u64 + 1);
    assert_eq!(page.piece.data, stored[first_nl + 1..]);
    assert_eq!(
        page.piece.offset,
        all.len() as u64 - page.piece.data.len() as u64
    );
}

/// A read longer than the ring writes only the bytes that will be kept.
#[tokio::test]
async fn a_read_longer_than_the_ring_writes_only_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    let live = logs.start(8);
    let all = numbered_lines(0..1000);
    pump_all(&live, Stream::Stdout, &[&all]).await;
    logs.finish(8);
    assert_eq!(
        logs.read_stored(8, Stream::Stdout).unwrap(),
        all[all.len() - 1024..]
    );
}

/// The sidecar holds the newest position across a restart: the next
/// attempt carries on from it, and the ring stays in order.
#[tokio::test]
async fn a_wrapped_ring_carries_on_in_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    let first = numbered_lines(0..200);
    let live = logs.start(9);
    pump_all(
        &live,
        Stream::Stdout,
        &first.chunks(100).collect::<Vec<_>>(),
    )
    .await;
    logs.finish(9);
    // A new daemon over the same directory.
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    let second = numbered_lines(200..230);
    let live = logs.start(9);
    pump_all(&live, Stream::Stdout, &[&second]).await;
    let (tx, rx) = mpsc::channel(16);
    assert_eq!(
        live.follow(Stream::Stdout, None, tx).await.unwrap(),
        (first.len() + second.len()) as u64
    );
    let got = drain(rx).await;
    assert_eq!(got[0].offset, first.len() as u64);
    logs.finish(9);
    let mut all = first;
    all.extend(&second);
    assert_eq!(
        logs.read_stored(9, Stream::Stdout).unwrap(),
        all[all.len() - 1024..]
    );
}

/// A crash in the middle of a write that reuses slots: the sidecar says a
/// write was reserved past what was written, and a reader takes only the
/// bytes whose slots that write could not have reached.
#[test]
fn a_crash_mid_write_loses_only_the_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let ring = 100u64;
    let data: Vec<u8> = (0..ring).map(|i| b'a' + (i % 26) as u8).collect();
    let cur = dir.path().join("4.out");
    std::fs::write(&cur, &data).unwrap();
    let ino = std::fs::metadata(&cur).unwrap().ino();
    // The stream had written 250 bytes and reserved 280: slots of
    // positions 250..280 may hold new bytes, so positions 150..180
    // (same slots) are gone, and 180..250 are kept.
    let layout = Layout {
        ring,
        total: 250,
        reserved: 280,
    };
    std::fs::write(dir.path().join("4.out.head"), head_bytes(ino, &layout)).unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), ring).unwrap();
    let page = logs.read_page(4, Stream::Stdout, Some(0), 1000).unwrap();
    assert_eq!(page.end, 250);
    assert_eq!(page.piece.offset, 180);
    assert_eq!(page.piece.skipped, 180);
    let expected: Vec<u8> = (180..250).map(|p| data[(p % ring) as usize]).collect();
    assert_eq!(page.piece.data, expected);
    // A sidecar naming another inode (the file was replaced) is ignored.
    std::fs::write(dir.path().join("4.out.head"), head_bytes(ino + 1, &layout)).unwrap();
    assert_eq!(logs.read_stored(4, Stream::Stdout).unwrap(), data);
}

/// Output an older quernd rotated into `.1` + current is read as one, and
/// the next attempt rewrites it as one file.
#[tokio::test]
async fn an_older_rotated_pair_is_read_and_settled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("6.out.1"), b"older\n").unwrap();
    std::fs::write(dir.path().join("6.out"), b"newer\n").unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    assert_eq!(
        logs.read_stored(6, Stream::Stdout).unwrap(),
        b"older\nnewer\n"
    );
    let live = logs.start(6);
    pump_all(&live, Stream::Stdout, &[b"again\n"]).await;
    logs.finish(6);
    assert!(!dir.path().join("6.out.1").exists());
    assert_eq!(
        logs.read_stored(6, Stream::Stdout).unwrap(),
        b"older\nnewer\nagain\n"
    );
}

/// `remove` deletes every file of a job and says how many bytes they held.
#[tokio::test]
async fn remove_reports_the_bytes_freed() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    let live = logs.start(11);
    pump_all(&live, Stream::Stdout, &[&numbered_lines(0..200)]).await;
    pump_all(&live, Stream::Stderr, &[b"oops\n"]).await;
    logs.finish(11);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(on_disk, 1024 + HEAD_LEN as u64 + 5);
    assert_eq!(logs.remove(11), on_disk);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(logs.remove(11), 0);
}

/// Checks what a follower got against everything written: each piece is
/// the bytes at its offset, right after the previous piece plus its gap,
/// a gap is followed by the start of a line, and the pieces and gaps end
/// where the output ends. Returns how many bytes were skipped.
fn check_pieces(all: &[u8], from: u64, pieces: &[Piece]) -> u64 {
    let mut at = from;
    let mut skipped = 0;
    for p in pieces {
        assert_eq!(
            p.offset,
            at + p.skipped,
            "a piece is not where its gap ends"
        );
        let start = p.offset as usize;
        assert_eq!(
            p.data,
            all[start..start + p.data.len()],
            "bytes at {start} differ"
        );
        if p.skipped > 0 {
            assert_eq!(
                all[start - 1],
                b'\n',
                "after a gap, output resumes mid-line at {start}"
            );
        }
        skipped += p.skipped;
        at = p.offset + p.data.len() as u64;
    }
    assert_eq!(at, all.len() as u64, "the pieces end before the output");
    skipped
}

/// A follower that falls a cap behind is told how much it missed, resumes
/// at a line's start, and never gets bytes overwritten under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_follower_is_told_of_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 64 * 1024).unwrap();
    let live = logs.start(12);
    // Room for one piece: the follower stalls until the test reads.
    let (tx, rx) = mpsc::channel(1);
    let l2 = live.clone();
    let follower = tokio::spawn(async move { l2.follow(Stream::Stdout, Some(0), tx).await });
    let all = numbered_lines(0..100_000);
    pump_all(&live, Stream::Stdout, &all.chunks(4096).collect::<Vec<_>>()).await;
    let pieces = drain(rx).await;
    assert_eq!(follower.await.unwrap().unwrap(), all.len() as u64);
    let skipped = check_pieces(&all, 0, &pieces);
    assert!(
        skipped > all.len() as u64 / 2,
        "only {skipped} bytes skipped"
    );
}

/// Followers racing a writer that laps the ring over and over: whatever
/// they get is checked byte for byte, so a read that returned overwritten
/// bytes fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_racing_the_writer_never_see_overwritten_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 8 * 1024).unwrap();
    let live = logs.start(13);
    let mut followers = Vec::new();
    for depth in [1, 2, 16] {
        let (tx, rx) = mpsc::channel(depth);
        let l2 = live.clone();
        let f = tokio::spawn(async move { l2.follow(Stream::Stdout, Some(0), tx).await });
        followers.push((f, tokio::spawn(drain(rx))));
    }
    let all = numbered_lines(0..200_000);
    pump_all(&live, Stream::Stdout, &all.chunks(1000).collect::<Vec<_>>()).await;
    for (f, pieces) in followers {
        assert_eq!(f.await.unwrap().unwrap(), all.len() as u64);
        check_pieces(&all, 0, &pieces.await.unwrap());
    }
}

/// A disk that fills up truncates the output, with a marker line where it
/// stops; the pipe is still drained to its end, so a job writing far more
/// than a pipe holds finishes instead of blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_truncates_output_with_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1 << 20).unwrap();
    let full_at = 100_000;
    logs.fail_writes_past(full_at);
    let live = logs.start(14);
    let all = numbered_lines(0..400_000);
    assert!(all.len() > 4 << 20, "less output than pipes may hold");
    // pump_all returns only once the writer wrote everything and the pump
    // reached EOF: a pump that stopped reading would hang it.
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        pump_all(
            &live,
            Stream::Stdout,
            &all.chunks(64 * 1024).collect::<Vec<_>>(),
        ),
    )
    .await
    .expect("the pump stopped draining the pipe");
    logs.finish(14);
    let stored = logs.read_stored(14, Stream::Stdout).unwrap();
    let marker = format!(
        "\n[quern: output truncated: {}]\n",
        std::io::Error::from_raw_os_error(nix::libc::ENOSPC)
    );
    assert_eq!(stored.len() as u64, full_at, "the file holds what fit");
    assert!(
        stored.ends_with(marker.as_bytes()),
        "no marker at the end: {:?}",
        String::from_utf8_lossy(&stored[stored.len() - 100..])
    );
    let kept = stored.len() - marker.len();
    assert_eq!(
        stored[..kept],
        all[..kept],
        "the output before the marker differs"
    );
}

/// When the marker itself cannot be added, it replaces the last bytes
/// kept; when there is room it is appended.
#[tokio::test]
async fn the_marker_is_appended_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1 << 20).unwrap();
    let live = logs.start(15);
    let stream = live.stream(Stream::Stdout).clone();
    let mut w = Writer::default();
    stream.load().unwrap();
    stream.append(&mut w, b"half a li").unwrap();
    let e = std::io::Error::from_raw_os_error(nix::libc::EIO);
    stream.mark_truncated(&mut w, &e);
    stream.finish();
    logs.finish(15);
    assert_eq!(
        String::from_utf8(logs.read_stored(15, Stream::Stdout).unwrap()).unwrap(),
        format!("half a li\n[quern: output truncated: {e}]\n")
    );
}

/// A daemon that dies while a wrapped stream is being written leaves a
/// sidecar whose lease runs ahead of its total: a reader then gets the
/// newest bytes written, right, minus at most the lease of the oldest; and
/// the next attempt carries on from there.
#[tokio::test]
async fn a_crash_mid_stream_keeps_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let ring = 16 * 1024;
    let all = numbered_lines(0..5000);
    {
        let logs = LogStore::new(dir.path().to_path_buf(), ring).unwrap();
        let live = logs.start(16);
        let stream = live.stream(Stream::Stdout).clone();
        let mut w = Writer::default();
        stream.load().unwrap();
        for c in all.chunks(1000) {
            stream.append(&mut w, c).unwrap();
        }
        // Dropped here without `close_head`: as a crash leaves it.
    }
    let logs = LogStore::new(dir.path().to_path_buf(), ring).unwrap();
    let page = logs.read_page(16, Stream::Stdout, None, PAGE_MAX).unwrap();
    assert_eq!(page.end, all.len() as u64);
    let start = page.piece.offset as usize;
    assert!(start + page.piece.data.len() == all.len());
    assert_eq!(page.piece.data, all[start..]);
    assert!(
        page.piece.data.len() as u64 >= ring - ring / 16 - LINE_WINDOW as u64,
        "only {} bytes kept",
        page.piece.data.len()
    );
    let more = numbered_lines(5000..5100);
    let live = logs.start(16);
    pump_all(&live, Stream::Stdout, &[&more]).await;
    logs.finish(16);
    let mut everything = all.clone();
    everything.extend(&more);
    let stored = logs.read_stored(16, Stream::Stdout).unwrap();
    assert!(stored.len() as u64 >= ring - ring / 16);
    assert!(everything.ends_with(&stored));
}

/// Looking at the files earlier attempts left happens on blocking threads
/// only: with that held up (a slow disk), a follower waits, and the
/// runtime's one thread still runs other tasks, and ends a silent stream.
#[tokio::test]
async fn a_slow_disk_never_holds_up_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
    std::fs::write(dir.path().join("17.out"), b"earlier\n").unwrap();
    let live = logs.start(17);
    let faults = logs.faults.clone();
    let released = Arc::new(AtomicBool::new(false));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let released = released.clone();
        std::thread::spawn(move || {
            let gate = faults.load_gate.write().unwrap();
            held_tx.send(()).unwrap();
            // Released by the test, or after a while if the runtime is
            // stuck, so that the test fails instead of hanging.
            let _ = release_rx.recv_timeout(std::time::Duration::from_secs(10));
            released.store(true, Ordering::SeqCst);
            drop(gate);
        })
    };
    held_rx.recv().unwrap();
    let (tx, rx) = mpsc::channel(4);
    let l2 = live.clone();
    let follower = tokio::spawn(async move { l2.follow(Stream::Stdout, Some(0), tx).await });
    tokio::task::yield_now().await;
    // A silent stream ends on the runtime, without the lengths.
    let (r, w) = pipe();
    drop(w);
    live.clone().pump(Stream::Stderr, r).await;
    assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
    assert!(
        !released.load(Ordering::SeqCst),
        "the runtime waited for the files to be looked at"
    );
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let (r, w) = pipe();
    drop(w);
    live.clone().pump(Stream::Stdout, r).await;
    assert_eq!(follower.await.unwrap().unwrap(), 8);
    let got = drain(rx).await;
    assert_eq!(got[0].data, b"earlier\n");
}
