//! Hostile files for the dataset decoders: no panic, an answer or an error naming the place.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_csv_and_json_never_panic(bytes in prop::collection::vec(prop_oneof![
        Just(b','), Just(b';'), Just(b'\t'), Just(b'\n'), Just(b'"'), Just(b'1'), Just(b'.'), Just(b'a'),
        Just(b'['), Just(b'{'), Just(b'}'), Just(b']'), Just(b':'), Just(0xff_u8), any::<u8>()
    ], 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(t) = kiln::dataset::read_table(&path, None, None) {
            for c in &t.columns {
                let n = match &c.values {
                    kiln::dataset::ColumnValues::Numeric(v) => v.len(),
                    kiln::dataset::ColumnValues::Category { codes, .. } => codes.len(),
                };
                prop_assert_eq!(n, t.n_rows);
            }
            let _ = t.profile();
        }
    }
}
