//! The image-reference parser never panics, and what it prints parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodguard::policies::image_ref::ImageRef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = ImageRef::parse(text) {
        let printed = parsed.to_string();
        let again = ImageRef::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, parsed, "{text:?} printed as {printed:?}");
    }
});
