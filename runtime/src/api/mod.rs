//! The control socket: protocol types, server (in the VMM) and client (in vmctl).
