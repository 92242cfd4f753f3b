//! Command output on stdout. A closed stdout (`velro-authz seed | head -1`)
//! ends the command quietly instead of panicking.

use std::io::Write;

/// Writes one line of command output.
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(text)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        // The reader is gone: nobody wants the rest.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for command output (see `line`).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::app::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;
