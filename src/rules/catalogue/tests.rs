use super::*;

#[test]
fn built_in_fields_have_their_types() {
    let c = Catalogue::default();
    let status = c.resolve("status").unwrap();
    assert_eq!(
        c.enum_values(status)
            .iter()
            .map(|v| &**v)
            .collect::<Vec<_>>(),
        STATUS_VALUES
    );
    assert_eq!(
        c.field_type(c.resolve("uptimeSeconds").unwrap()),
        FieldType::Number
    );
    assert_eq!(
        c.field_type(c.resolve("tags").unwrap()),
        FieldType::StringArray
    );
    let days = c.resolve("daysSinceLastSeen").unwrap();
    assert_eq!(
        c.computed(days),
        Some(Computed::DaysSince(c.resolve("lastSeenAt").unwrap()))
    );
    for identifier in ["imei", "iccid", "esn", "mdn", "meid", "msisdn"] {
        let field = c.builtin(identifier).unwrap();
        assert_eq!(c.field_type(field), FieldType::String, "{identifier}");
        assert_eq!(c.computed(field), None);
    }
}

#[test]
fn undeclared_custom_fields_are_interned_strings() {
    let c = Catalogue::default();
    let a = c.resolve("custom.rack").unwrap();
    assert_eq!(c.resolve("custom.rack").unwrap(), a);
    assert_eq!(c.field_type(a), FieldType::String);
    assert_eq!(&*c.name(a), "custom.rack");
    assert_eq!(c.lookup("custom.other"), None);
}

#[test]
fn unknown_and_malformed_names_are_refused() {
    let c = Catalogue::default();
    assert_eq!(
        c.resolve("hostnam"),
        Err(FieldLookupError::Unknown("hostnam".into()))
    );
    assert!(c.resolve("custom.").is_err());
    assert!(c.resolve("custom.has space").is_err());
    assert!(c.resolve(&format!("custom.{}", "x".repeat(129))).is_err());
}

#[test]
fn declared_custom_fields_carry_their_type() {
    let config: CatalogueConfig = toml::from_str(
        r#"
        custom_fields = [
          { key = "rack", type = "number" },
          { key = "tier", type = "enum", values = ["gold", "silver"] },
        ]
        extra_enum_values = { status = ["retired"] }
        "#,
    )
    .unwrap();
    let c = Catalogue::from_config(&config).unwrap();
    assert_eq!(
        c.field_type(c.resolve("custom.rack").unwrap()),
        FieldType::Number
    );
    assert_eq!(c.enum_values(c.resolve("custom.tier").unwrap()).len(), 2);
    assert!(c
        .enum_values(c.resolve("status").unwrap())
        .iter()
        .any(|v| &**v == "retired"));
}

#[test]
fn bad_catalogue_configurations_are_refused() {
    let enum_without_values = CatalogueConfig {
        custom_fields: vec![CustomFieldConfig {
            key: "tier".into(),
            ty: DeclaredType::Enum,
            values: vec![],
            description: String::new(),
        }],
        ..Default::default()
    };
    assert_eq!(
        Catalogue::from_config(&enum_without_values).unwrap_err(),
        CatalogueError::EnumWithoutValues("tier".into())
    );
    let not_enum = CatalogueConfig {
        extra_enum_values: HashMap::from([("hostname".to_string(), vec!["x".to_string()])]),
        ..Default::default()
    };
    assert_eq!(
        Catalogue::from_config(&not_enum).unwrap_err(),
        CatalogueError::NotABuiltInEnum("hostname".into())
    );
    assert!(toml::from_str::<CatalogueConfig>("unknown = 1").is_err());
}

#[test]
fn the_custom_field_cap_holds() {
    let c = Catalogue::from_config(&CatalogueConfig {
        max_custom_fields: 2,
        ..Default::default()
    })
    .unwrap();
    c.resolve("custom.a").unwrap();
    c.resolve("custom.b").unwrap();
    assert_eq!(
        c.resolve("custom.c"),
        Err(FieldLookupError::CustomFieldCapReached(2))
    );
    // Known names still resolve at the cap.
    c.resolve("custom.a").unwrap();
}
