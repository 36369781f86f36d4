//! Why a command failed, and the exit code that says so (listed in `sluice --help`).

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// Failure while working (broker, I/O, a batch): exit code 1.
    Failed(String),
    /// A bad command-line value that clap could not catch: exit code 2.
    Usage(String),
    /// The job file is not valid: exit code 3.
    Job(String),
    /// `checkpoint inspect` found damage: exit code 4 (the report is already printed).
    Damaged,
    /// Whoever read stdout closed it (`| head`): the command ends quietly, exit code 0.
    Closed,
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::Job(_) => 3,
            Self::Damaged => 4,
            Self::Closed => 0,
        }
    }

    /// What to print on stderr.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Failed(m) | Self::Usage(m) | Self::Job(m) => Some(m),
            Self::Damaged | Self::Closed => None,
        }
    }
}

impl From<sluice_client::Error> for CliError {
    fn from(e: sluice_client::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// The result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;
