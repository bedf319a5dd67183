//! A task's files: `<task_dir>/<task>/mapping.json` plus either `<task>.zip` (what LF's task
//! script extracts) or the extracted tree itself, under the same member paths.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::Step3Error;

/// Where the CSV files of one task are read from.
pub struct TaskSource {
    /// The task directory (`<task_dir>/<task>`).
    dir: PathBuf,
    /// The opened `<task>.zip`, when the directory holds one.
    zip: Option<(PathBuf, zip::ZipArchive<File>)>,
}

impl TaskSource {
    /// Opens `dir`, preferring `<dir>/<task>.zip` (task = the directory's name) over a tree.
    pub fn open(dir: &Path) -> Result<Self, Step3Error> {
        let task = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let zip_path = task.map(|t| dir.join(format!("{t}.zip")));
        let zip = match zip_path {
            Some(path) if path.is_file() => {
                let file = File::open(&path).map_err(|source| Step3Error::Io {
                    path: path.clone(),
                    source,
                })?;
                let archive = zip::ZipArchive::new(file).map_err(|e| Step3Error::Zip {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Some((path, archive))
            }
            _ => None,
        };
        if zip.is_none() && !dir.is_dir() {
            return Err(Step3Error::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            zip,
        })
    }

    /// The task directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How a member is named in errors: `<zip>:<member>` or the file's path.
    pub fn display(&self, member: &str) -> String {
        match &self.zip {
            Some((path, _)) => format!("{}:{member}", path.display()),
            None => self.dir.join(member).display().to_string(),
        }
    }

    /// Whether `member` exists.
    pub fn contains(&self, member: &str) -> bool {
        match &self.zip {
            Some((_, archive)) => archive.index_for_name(member).is_some(),
            None => self.dir.join(member).is_file(),
        }
    }

    /// The text of `member` (UTF-8, as the task scripts read it).
    pub fn read(&mut self, member: &str) -> Result<String, Step3Error> {
        let shown = self.display(member);
        let bytes = match &mut self.zip {
            Some((path, archive)) => {
                let mut entry = archive.by_name(member).map_err(|e| Step3Error::Zip {
                    path: path.clone(),
                    message: format!("{member}: {e}"),
                })?;
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|source| Step3Error::Io {
                        path: PathBuf::from(&shown),
                        source,
                    })?;
                bytes
            }
            None => {
                let path = self.dir.join(member);
                std::fs::read(&path).map_err(|source| Step3Error::Io { path, source })?
            }
        };
        String::from_utf8(bytes).map_err(|e| Step3Error::Csv {
            file: shown,
            line: 0,
            message: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        })
    }
}
