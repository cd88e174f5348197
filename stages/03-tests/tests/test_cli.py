from app import db


def test_create_tables(app, runner, monkeypatch):
    monkeypatch.setenv('FLASK_CONFIG', 'testing')
    from wsgi import create_tables

    with app.app_context():
        db.drop_all()
    result = runner.invoke(create_tables)
    assert result.exit_code == 0
    assert 'Created the tables: names.' in result.output
    with app.app_context():
        assert db.inspect(db.engine).get_table_names() == ['names']
    result = runner.invoke(create_tables)
    assert result.exit_code == 0
    assert 'nothing was created' in result.output
