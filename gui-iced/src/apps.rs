//! Names and icons of applications, looked up by executable in the `.desktop` files of the
//! freedesktop.org Desktop Entry specification.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use iced::widget::image;

/// Name and icon of an application, from its `.desktop` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopEntry {
    /// The `Name` key: the name people know the application by.
    pub name: String,
    /// The icon file the `Icon` key resolves to, when it is a PNG that exists.
    pub icon: Option<PathBuf>,
}

/// Looks up applications in directories of `.desktop` files, caching the results.
#[derive(Debug)]
pub struct AppDirectory {
    entry_dirs: Vec<PathBuf>,
    icon_dirs: Vec<PathBuf>,
    cache: HashMap<PathBuf, Option<DesktopEntry>>,
}

/// Icon sizes tried, largest first, in each theme directory.
const ICON_SIZES: [&str; 5] = ["64x64", "48x48", "128x128", "32x32", "256x256"];

impl AppDirectory {
    /// Returns a directory over the system's and the user's application and icon folders.
    pub fn system() -> Self {
        let mut entry_dirs = vec![
            PathBuf::from("/usr/share/applications"),
            PathBuf::from("/usr/local/share/applications"),
        ];
        if let Some(home) = std::env::var_os("HOME") {
            entry_dirs.push(Path::new(&home).join(".local/share/applications"));
        }
        let icon_dirs = vec![
            PathBuf::from("/usr/share/icons/hicolor"),
            PathBuf::from("/usr/share/pixmaps"),
        ];
        Self::with_dirs(entry_dirs, icon_dirs)
    }

    /// Returns a directory over the given folders of `.desktop` files and icon themes.
    pub fn with_dirs(entry_dirs: Vec<PathBuf>, icon_dirs: Vec<PathBuf>) -> Self {
        Self {
            entry_dirs,
            icon_dirs,
            cache: HashMap::new(),
        }
    }

    /// Returns the entry of the application whose `Exec` or `TryExec` runs `executable`.
    pub fn lookup(&mut self, executable: &Path) -> Option<DesktopEntry> {
        if let Some(cached) = self.cache.get(executable) {
            return cached.clone();
        }
        let found = self.search(executable);
        self.cache.insert(executable.to_owned(), found.clone());
        found
    }

    fn search(&self, executable: &Path) -> Option<DesktopEntry> {
        for dir in &self.entry_dirs {
            let Ok(files) = fs::read_dir(dir) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_none_or(|ext| ext != "desktop") {
                    continue;
                }
                let Ok(text) = fs::read_to_string(&path) else {
                    continue;
                };
                if let Some(fields) = parse_entry(&text)
                    && fields.runs(executable)
                {
                    let icon = fields.icon.and_then(|icon| self.resolve_icon(&icon));
                    return Some(DesktopEntry {
                        name: fields.name,
                        icon,
                    });
                }
            }
        }
        None
    }

    /// Finds the PNG file of an `Icon` value: an absolute path, or a name in a theme folder.
    fn resolve_icon(&self, icon: &str) -> Option<PathBuf> {
        let path = Path::new(icon);
        if path.is_absolute() {
            return is_png(path).then(|| path.to_owned());
        }
        let file = format!("{icon}.png");
        self.icon_dirs.iter().find_map(|dir| {
            let sized = ICON_SIZES
                .iter()
                .map(|size| dir.join(size).join("apps").join(&file));
            sized
                .chain(std::iter::once(dir.join(&file)))
                .find(|candidate| is_png(candidate))
        })
    }
}

fn is_png(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "png") && path.is_file()
}

/// The keys of a `[Desktop Entry]` group that matter here.
#[derive(Debug, Default)]
struct EntryFields {
    name: String,
    exec: Option<String>,
    try_exec: Option<String>,
    icon: Option<String>,
}

impl EntryFields {
    /// Returns whether the entry starts `executable`, comparing absolute paths exactly and bare
    /// program names with the executable's file name.
    fn runs(&self, executable: &Path) -> bool {
        let programs = [
            self.try_exec.as_deref(),
            self.exec.as_deref().and_then(program),
        ];
        programs.into_iter().flatten().any(|program| {
            let program = Path::new(program);
            if program.is_absolute() {
                program == executable
            } else {
                executable.file_name() == Some(program.as_os_str())
            }
        })
    }
}

/// Reads the keys of the `[Desktop Entry]` group; returns `None` for hidden entries and files
/// without a name.
fn parse_entry(text: &str) -> Option<EntryFields> {
    let mut fields = EntryFields::default();
    let mut in_entry = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_entry = line == "[Desktop Entry]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !in_entry {
            continue;
        }
        let value = value.trim().to_owned();
        match key.trim() {
            "Name" => fields.name = value,
            "Exec" => fields.exec = Some(value),
            "TryExec" => fields.try_exec = Some(value),
            "Icon" => fields.icon = Some(value),
            "Hidden" | "NoDisplay" if value == "true" => return None,
            _ => {}
        }
    }
    (!fields.name.is_empty()).then_some(fields)
}

/// Returns the program an `Exec` value starts, skipping an `env VAR=value` prefix.
fn program(exec: &str) -> Option<&str> {
    let mut words = exec.split_whitespace().map(|word| word.trim_matches('"'));
    let mut word = words.next()?;
    if word == "env" || word.ends_with("/env") {
        word = words.find(|word| !word.contains('='))?;
    }
    Some(word)
}

/// Decodes a PNG icon into an image the interface can draw; `None` when it cannot be read.
pub fn load_icon(path: &Path) -> Option<image::Handle> {
    let file = fs::File::open(path).ok()?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().ok()?;
    let mut buffer = vec![0; reader.output_buffer_size()?];
    let frame = reader.next_frame(&mut buffer).ok()?;
    let pixels = &buffer[..frame.buffer_size()];
    let rgba = to_rgba(pixels, frame.color_type)?;
    Some(image::Handle::from_rgba(frame.width, frame.height, rgba))
}

fn to_rgba(pixels: &[u8], color: png::ColorType) -> Option<Vec<u8>> {
    let rgba = match color {
        png::ColorType::Rgba => pixels.to_vec(),
        png::ColorType::Rgb => pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        png::ColorType::GrayscaleAlpha => pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        png::ColorType::Grayscale => pixels.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::Indexed => return None,
    };
    Some(rgba)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn finds_entry_by_program_name() {
        let apps = tempfile::tempdir().unwrap();
        let icons = tempfile::tempdir().unwrap();
        write(
            apps.path(),
            "firefox.desktop",
            "[Desktop Entry]\nName=Firefox Web Browser\nExec=env MOZ_X=1 firefox %u\n\
             Icon=firefox\n[Desktop Action new]\nName=New Window\n",
        );
        let icon_dir = icons.path().join("48x48/apps");
        fs::create_dir_all(&icon_dir).unwrap();
        fs::write(icon_dir.join("firefox.png"), b"not decoded here").unwrap();

        let mut directory =
            AppDirectory::with_dirs(vec![apps.path().into()], vec![icons.path().into()]);
        let entry = directory
            .lookup(Path::new("/usr/lib/firefox/firefox"))
            .unwrap();
        assert_eq!(entry.name, "Firefox Web Browser");
        assert_eq!(entry.icon, Some(icon_dir.join("firefox.png")));
    }

    #[test]
    fn absolute_exec_must_match_exactly() {
        let apps = tempfile::tempdir().unwrap();
        write(
            apps.path(),
            "tool.desktop",
            "[Desktop Entry]\nName=Tool\nExec=/opt/tool/bin/tool --flag\n",
        );
        let mut directory = AppDirectory::with_dirs(vec![apps.path().into()], vec![]);
        assert!(directory.lookup(Path::new("/usr/bin/tool")).is_none());
        let entry = directory.lookup(Path::new("/opt/tool/bin/tool")).unwrap();
        assert_eq!(entry.name, "Tool");
        assert_eq!(entry.icon, None);
    }

    #[test]
    fn hidden_entries_are_skipped() {
        let apps = tempfile::tempdir().unwrap();
        write(
            apps.path(),
            "curl.desktop",
            "[Desktop Entry]\nName=Curl\nExec=curl\nNoDisplay=true\n",
        );
        let mut directory = AppDirectory::with_dirs(vec![apps.path().into()], vec![]);
        assert!(directory.lookup(Path::new("/usr/bin/curl")).is_none());
    }

    #[test]
    fn grey_pixels_become_rgba() {
        let rgba = to_rgba(&[10, 200], png::ColorType::GrayscaleAlpha).unwrap();
        assert_eq!(rgba, vec![10, 10, 10, 200]);
    }
}
