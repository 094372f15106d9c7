package org.example.procfhir.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.searchparam.submit.config.SearchParamSubmitterConfig;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.SpringBootConfiguration;
import org.springframework.boot.autoconfigure.ImportAutoConfiguration;
import org.springframework.boot.autoconfigure.context.PropertyPlaceholderAutoConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.ServletWebServerFactoryAutoConfiguration;
import org.springframework.context.annotation.Import;

/**
 * A small HAPI FHIR R4 JPA server on H2 for the project's interoperability tests.
 *
 * <p>Only the embedded servlet container comes from Spring Boot's auto-configuration; the FHIR
 * storage, REST layer and validation are wired explicitly from HAPI's published configuration
 * classes ({@link JpaR4Config}, {@link HapiJpaConfig}, batch2, subscriptions) plus the beans of
 * {@link StorageConfig} and {@link RestConfig}.
 *
 * <p>Run: {@code java -jar procfhir-hapi-server.jar --server.port=8090}; the FHIR base is
 * {@code http://127.0.0.1:8090/fhir}.
 */
@SpringBootConfiguration
@ImportAutoConfiguration({PropertyPlaceholderAutoConfiguration.class, ServletWebServerFactoryAutoConfiguration.class})
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	ThreadPoolFactoryConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	SubscriptionSubmitterConfig.class,
	SubscriptionProcessorConfig.class,
	SubscriptionChannelConfig.class,
	SearchParamSubmitterConfig.class,
	StorageConfig.class,
	RestConfig.class,
	ClinicalReasoningConfig.class
})
public class ProcfhirHapiServer {

	public static void main(String[] args) {
		SpringApplication app = new SpringApplication(ProcfhirHapiServer.class);
		app.setAllowBeanDefinitionOverriding(true);
		app.setAllowCircularReferences(true);
		app.run(args);
	}
}
