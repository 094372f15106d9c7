package org.example.procfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.model.HistoryCountModeEnum;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.util.LoggingEmailSender;
import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManagerFactory;
import java.util.Properties;
import javax.sql.DataSource;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * Storage: the database (H2 or PostgreSQL, chosen by the one option {@code procfhir.jdbc-url}),
 * Hibernate, and the JPA server's settings.
 */
@Configuration
public class StorageConfig {

	/**
	 * The JDBC URL. Default: a private in-memory H2 database (fresh on every start). A file
	 * database, e.g. {@code jdbc:h2:file:./run/hapi-8090}, keeps data across restarts. A
	 * PostgreSQL URL, e.g. {@code jdbc:postgresql://127.0.0.1:5432/hapi?user=hapi}, runs the server
	 * on PostgreSQL (user and password in the URL, or in procfhir.jdbc-user / procfhir.jdbc-password).
	 */
	@Value("${procfhir.jdbc-url:jdbc:h2:mem:procfhir;DB_CLOSE_DELAY=-1}")
	private String myJdbcUrl;

	@Value("${procfhir.jdbc-user:}")
	private String myJdbcUser;

	@Value("${procfhir.jdbc-password:}")
	private String myJdbcPassword;

	private boolean isPostgres() {
		return myJdbcUrl.startsWith("jdbc:postgresql:");
	}

	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings settings = new JpaStorageSettings();
		// Client-assigned ids containing a letter are accepted (purely numeric ones are not).
		settings.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC);
		// Never answer a search from the results of an earlier identical search.
		settings.setReuseCachedSearchResultsForMillis(null);
		// Let tests reset the database: DELETE with _expunge, and $expunge (expungeEverything).
		settings.setExpungeEnabled(true);
		settings.setDeleteExpungeEnabled(true);
		settings.setAllowMultipleDelete(true);
		// $install-package installs draft resources too.
		settings.setValidateResourceStatusForPackageUpload(false);
		// No Lucene / Elasticsearch index.
		settings.setAdvancedHSearchIndexing(false);
		settings.setStoreResourceInHSearchIndex(false);
		// _history answers carry an accurate total (the default counts from a cache, and may be
		// stale right after a write).
		settings.setHistoryCountMode(HistoryCountModeEnum.COUNT_ACCURATE);
		return settings;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Bean
	public IEmailSender emailSender() {
		return new LoggingEmailSender();
	}

	@Bean(destroyMethod = "close")
	public DataSource dataSource() {
		HikariConfig config = new HikariConfig();
		config.setJdbcUrl(myJdbcUrl);
		if (isPostgres()) {
			config.setDriverClassName("org.postgresql.Driver");
			if (!myJdbcUser.isEmpty()) {
				config.setUsername(myJdbcUser);
				config.setPassword(myJdbcPassword);
			}
			config.setPoolName("procfhir-postgresql");
		} else {
			config.setDriverClassName("org.h2.Driver");
			config.setUsername("sa");
			config.setPassword("");
			config.setPoolName("procfhir-h2");
		}
		config.setMaximumPoolSize(20);
		return new HikariDataSource(config);
	}

	@Bean
	@Primary
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory theBeanFactory,
			FhirContext theFhirContext,
			JpaStorageSettings theStorageSettings,
			DataSource theDataSource) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(theBeanFactory, theFhirContext, theStorageSettings);
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setDataSource(theDataSource);
		Properties properties = new Properties();
		properties.put(
				"hibernate.dialect",
				isPostgres() ? HapiFhirPostgresDialect.class.getName() : HapiFhirH2Dialect.class.getName());
		properties.put("hibernate.hbm2ddl.auto", "update");
		properties.put("hibernate.format_sql", "false");
		properties.put("hibernate.show_sql", "false");
		properties.put("hibernate.search.enabled", "false");
		// No JDBC batching (hibernate.jdbc.batch_size): with H2 in the same process there are no
		// round trips to save; measured with bench_upload.py, no difference.
		if (myJdbcUrl.startsWith("jdbc:h2:")) {
			// Id lookups of transaction entries answered from an index (see the class).
			properties.put("hibernate.session_factory.statement_inspector", new H2IdLookupStatementInspector());
		}
		factory.setJpaProperties(properties);
		return factory;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory theEntityManagerFactory) {
		JpaTransactionManager manager = new JpaTransactionManager();
		manager.setEntityManagerFactory(theEntityManagerFactory);
		return manager;
	}
}
