//! Spawning, finding and signalling VMM processes.
