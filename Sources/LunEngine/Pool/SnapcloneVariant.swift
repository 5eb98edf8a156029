// Which of the reference's two ways a snapclone's predecessor gets its copies (docs/DESIGN.md
// section 8b): on the write path, or in a second background pass. A pool setting, so that
// both can run and be measured against each other.

public enum SnapcloneVariant: String, Sendable, CaseIterable {
    /// The scaling variant (003 Figs. 15a-d): a write copies as for a plain snapshot (at most
    /// two copies); the background copy's second pass gives the predecessor the segments
    /// that only the clone kept for it. The default.
    case secondPass = "second-pass"
    /// The first variant (003 [0104]): a copy on first write whose destination is a copying
    /// snapclone also copies to the snapclone's predecessor, a third copy on the write path,
    /// so the second pass only has left what discards and shrinks handed to the clone.
    case thirdCopy = "third-copy"
}
