//! Unit tests of the forge against real git repositories.
