//! The Keychain store (CONTRACT.md "Stores: the file, and the macOS Keychain"), black-box, on
//! Linux: a fake `security` first on PATH (fake_security/, driven by
//! `claude_tokend_e2e::keychain::FakeKeychain`) holds the item, and the real binary runs with
//! `--store keychain` against the loopback token endpoint, as the file tests run on the file.

mod fake;
